package redisstream_test

import (
	"errors"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// TestCluster_failoverKeepsTheHandlerRunning runs a handler on a cluster of
// three masters with one replica each while a producer publishes, and
// kills -9 the master of the handler's own stream a third of the way in.
// Its replica takes over; every message is handled (one in five fails
// once and goes through a tier), the handler goes on without a restart, and
// the publisher only has to try again through the failover. It logs the
// figures RELIABILITY.md reports: the publish outage, duplicates, lost
// messages.
func TestCluster_failoverKeepsTheHandlerRunning(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t, 3, 1)
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs()})
	t.Cleanup(func() { _ = client.Close() })
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{
		MaxIdleTime: time.Second, ClaimInterval: 100 * time.Millisecond, NackResendSleep: 50 * time.Millisecond, CloseTimeout: 5 * time.Second,
	}, logger)
	topic := "orders"
	const n = 300

	var mu sync.Mutex
	handled := map[string]int{} // successful runs per message
	failedOnce := map[string]bool{}
	firstRun := map[string]time.Time{} // successful run per message
	_, h := runRouter(t, b, tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}}, "billing", topic, func(msg *message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		i, _ := strconv.Atoi(msg.UUID)
		if i%5 == 0 && !failedOnce[msg.UUID] {
			failedOnce[msg.UUID] = true
			return errors.New("fails once")
		}
		if handled[msg.UUID]++; handled[msg.UUID] == 1 {
			firstRun[msg.UUID] = time.Now()
		}
		return nil
	}, logger)
	victim := masterOf(t, client, topic)
	t.Logf("main stream %s on %s; tier %s on %s; DLQ on %s", topic, victim,
		h.Topics.Tiers[0], masterOf(t, client, h.Topics.Tiers[0]), masterOf(t, client, h.Topics.DLQ))

	// The producer tries each message until Redis takes it, as a
	// producer must through a failover.
	var (
		killedAt                 time.Time
		lastOKBefore, firstAfter time.Time
		publishErrors            int
		published                = map[string]time.Time{}
	)
	for i := range n {
		if i == n/3 {
			killedAt = time.Now()
			cluster.Node(victim).Kill()
		}
		for {
			err := b.Publisher().Publish(topic, message.NewMessage(strconv.Itoa(i), nil))
			if err == nil {
				published[strconv.Itoa(i)] = time.Now()
				if killedAt.IsZero() {
					lastOKBefore = time.Now()
				} else if firstAfter.IsZero() {
					firstAfter = time.Now()
				}
				break
			}
			require.NotErrorIs(t, err, tiered.ErrUnpublishable, "a failover is temporary")
			publishErrors++
			require.Less(t, time.Since(killedAt), time.Minute, "the cluster never took writes again: %v", err)
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(5 * time.Millisecond)
	}

	missing := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for i := range n {
			if handled[strconv.Itoa(i)] == 0 {
				out = append(out, strconv.Itoa(i))
			}
		}
		return out
	}
	deadline := time.Now().Add(90 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(tick)
	}
	lost := missing()
	mu.Lock()
	duplicates := 0
	for _, c := range handled {
		duplicates += c - 1
	}
	// How long the messages published once the replica took over waited
	// for the handler (those that do not fail once).
	var slowest time.Duration
	for i := n / 3; i < n; i++ {
		id := strconv.Itoa(i)
		if i%5 != 0 && !firstRun[id].IsZero() {
			slowest = max(slowest, firstRun[id].Sub(published[id]))
		}
	}
	mu.Unlock()
	sort.Strings(lost)
	t.Logf("failover: publish outage %v (from the kill: %v), %d publish errors; after it, messages reached the handler within %v; "+
		"%d of %d messages handled twice, %d lost %v",
		firstAfter.Sub(lastOKBefore).Round(time.Millisecond), firstAfter.Sub(killedAt).Round(time.Millisecond), publishErrors,
		slowest.Round(time.Millisecond), duplicates, n, len(lost), lost)
	require.Empty(t, lost, "every message acknowledged by Redis is handled")
	require.Positive(t, publishErrors, "the kill was felt")
	// go-redis alone reloads its map of slots every 60s, and keeps
	// dialing the dead master until then; the backend has it reload on
	// the errors of a failover, which takes seconds.
	require.Less(t, firstAfter.Sub(killedAt), 30*time.Second, "the client kept sending to the dead master")
}
