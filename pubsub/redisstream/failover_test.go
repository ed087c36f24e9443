package redisstream_test

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// TestCluster_failoverKeepsTheHandlerRunning runs a handler on a Redis
// Cluster of three masters with one replica each while messages flow
// through its main topic and a tier, and kills (SIGKILL) the master of the
// main stream, then, once its replica took over, the master of the tier
// stream, with entries held in it. The router is never restarted: every
// message is handled from the tier, none early, none lost, nothing
// dead-lettered. Duplicates and the outages are logged (RELIABILITY.md has
// the figures of a run).
func TestCluster_failoverKeepsTheHandlerRunning(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t, redistest.ClusterConfig{ReplicasPerMaster: 1, NodeTimeout: 2 * time.Second})
	client := newClusterClient(t, cluster.Addrs())
	logger := newLogger(t)
	// MaxIdleTime stays above the failover time (node timeout + election),
	// or the consumer's own claim loop would take back entries whose acks
	// or reads stopped during the failover.
	b := newBackend(t, client, redisstream.Config{
		MaxIdleTime:     10 * time.Second,
		ClaimInterval:   200 * time.Millisecond,
		NackResendSleep: 100 * time.Millisecond,
	}, logger)
	const delay = time.Second
	policy := tiered.Policy{Delays: []time.Duration{delay}, MaxAttempts: 3}
	topics := spreadTopics(t, client, policy, "billing")
	tier := topics.Tiers[0]

	var (
		mu    sync.Mutex
		calls []failoverCall
	)
	runRouter(t, b, policy, "billing", topics.Main, func(msg *message.Message) error {
		c := failoverCall{uuid: msg.UUID, topic: message.SubscribeTopicFromCtx(msg.Context()), at: time.Now()}
		if due, ok, _ := tiered.DueAt(msg.Metadata); ok {
			c.due = due
		}
		mu.Lock()
		calls = append(calls, c)
		mu.Unlock()
		if c.topic == topics.Main {
			return errors.New("fails once, then succeeds from the tier")
		}
		return nil
	}, logger)

	// The producer publishes one message after another, each again until
	// Redis takes it (as an application would), until told to stop.
	const interval = 20 * time.Millisecond
	var publishedN, publishErrors atomic.Int64
	stop := make(chan struct{})
	producerDone := make(chan struct{})
	go func() {
		defer close(producerDone)
		for i := 0; ; i++ {
			msg := message.NewMessage("m"+strconv.Itoa(i), []byte("payload"))
			for b.Publisher().Publish(topics.Main, msg) != nil {
				publishErrors.Add(1)
				time.Sleep(50 * time.Millisecond)
			}
			publishedN.Add(1)
			select {
			case <-stop:
				return
			case <-time.After(interval):
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-producerDone
	}()
	// publishMore waits until the producer published k more messages.
	publishMore := func(k int64) {
		t.Helper()
		target := publishedN.Load() + k
		require.Eventually(t, func() bool { return publishedN.Load() >= target }, 3*waitFor, tick, "the producer is stuck at %d messages", publishedN.Load())
	}
	stamp := func(what string, args ...any) {
		t.Logf("%s "+what, append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}

	ctx := context.Background()
	kill := func(stream string) (string, time.Time) {
		t.Helper()
		addr := masterOf(t, client, stream)
		require.NoError(t, cluster.Kill(addr))
		stamp("killed %s, master of %s", addr, stream)
		return addr, time.Now()
	}

	publishMore(50)
	mainMaster, mainKilled := kill(topics.Main)
	publishMore(1) // the producer got through: a replica took over
	stamp("published again")
	require.NoError(t, cluster.Restart(mainMaster))
	readyCtx, cancel := context.WithTimeout(ctx, 3*waitFor)
	require.NoError(t, cluster.WaitReady(readyCtx), "the old master did not rejoin")
	cancel()
	rejoined := time.Now()
	stamp("old master rejoined")

	publishMore(50) // tier entries held while the tier's master dies
	_, tierKilled := kill(tier)
	publishMore(100)
	close(stop)
	<-producerDone
	n := int(publishedN.Load())
	stamp("published %d in all", n)

	handled := func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]int{}
		for _, c := range calls {
			if c.topic == tier {
				out[c.uuid]++
			}
		}
		return out
	}
	require.Eventually(t, func() bool { return len(handled()) == n }, 3*waitFor, tick, "not every message was handled from the tier")

	mu.Lock()
	all := append([]failoverCall(nil), calls...)
	mu.Unlock()
	duplicates := map[string]int{}
	for _, c := range all {
		require.True(t, c.topic == topics.Main || c.topic == tier, "handled from %s", c.topic)
		if c.topic == tier {
			require.False(t, c.at.Before(c.due), "%s handled from the tier %v before its due time", c.uuid, c.due.Sub(c.at))
		}
	}
	perTopic := map[string]map[string]int{}
	for _, c := range all {
		if perTopic[c.topic] == nil {
			perTopic[c.topic] = map[string]int{}
		}
		perTopic[c.topic][c.uuid]++
	}
	for topic, counts := range perTopic {
		for _, k := range counts {
			duplicates[topic] += k - 1
		}
	}
	require.Zero(t, xlen(t, client, topics.DLQ), "a message was dead-lettered")

	t.Logf("%d messages; %d publish attempts failed; duplicate handlings: main %d, tier %d", n, publishErrors.Load(), duplicates[topics.Main], duplicates[tier])
	end := time.Now()
	t.Logf("main stream's master killed: longest pause of main-topic handlings until it rejoined %v", longestGap(all, topics.Main, mainKilled, rejoined))
	t.Logf("tier stream's master killed: longest pause of tier handlings %v, of main-topic handlings (their copies go to the tier) %v",
		longestGap(all, tier, tierKilled, end), longestGap(all, topics.Main, tierKilled, end))
}

// failoverCall is one handling in TestCluster_failoverKeepsTheHandlerRunning.
type failoverCall struct {
	uuid  string
	topic string
	at    time.Time
	due   time.Time
}

// longestGap returns the longest time between two handlings from topic in
// [from, to], counting from from.
func longestGap(calls []failoverCall, topic string, from, to time.Time) time.Duration {
	var at []time.Time
	for _, c := range calls {
		if c.topic == topic && c.at.After(from) && c.at.Before(to) {
			at = append(at, c.at)
		}
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	var gap time.Duration
	last := from
	for _, a := range at {
		gap = max(gap, a.Sub(last))
		last = a
	}
	return gap
}

// TestCluster_lostMasterWithoutReplica kills (SIGKILL) a master that has
// no replica, in a cluster whose nodes keep an append-only file, while two
// handlers run: "billing" on a stream of that master, "shipping" on a
// stream of another. Without a replica, the lost master's streams are out
// until it restarts. With cluster-require-full-coverage yes (Redis's
// default) the whole cluster refuses commands (CLUSTERDOWN) once the
// others mark the master failed, after the node timeout; with no, the
// other masters' streams go on. Either way, once the master is back with
// its append-only file, both handlers go on by themselves and nothing is
// lost.
func TestCluster_lostMasterWithoutReplica(t *testing.T) {
	t.Parallel()
	for _, fullCoverage := range []bool{true, false} {
		t.Run("cluster-require-full-coverage="+map[bool]string{true: "yes", false: "no"}[fullCoverage], func(t *testing.T) {
			t.Parallel()
			testLostMasterWithoutReplica(t, fullCoverage)
		})
	}
}

func testLostMasterWithoutReplica(t *testing.T, fullCoverage bool) {
	const nodeTimeout = 2 * time.Second
	cluster := redistest.StartCluster(t, redistest.ClusterConfig{
		NodeTimeout: nodeTimeout,
		ServerArgs: []string{
			"--appendonly", "yes", "--appendfsync", "always",
			"--cluster-require-full-coverage", map[bool]string{true: "yes", false: "no"}[fullCoverage],
		},
	})
	client := newClusterClient(t, cluster.Addrs())
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{
		MaxIdleTime:     30 * time.Second, // above the outage: nothing is claimed again
		ClaimInterval:   200 * time.Millisecond,
		NackResendSleep: 100 * time.Millisecond,
	}, logger)
	policy := tiered.Policy{Delays: []time.Duration{time.Second}}

	// Two main streams on two masters.
	lost := redistest.Name(t, "orders")
	kept := redistest.Name(t, "parcels")
	for masterOf(t, client, kept) == masterOf(t, client, lost) {
		kept = redistest.Name(t, "parcels")
	}
	lostMaster := masterOf(t, client, lost)

	var mu sync.Mutex
	handled := map[string]int{}
	h := func(msg *message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		handled[msg.UUID]++
		return nil
	}
	count := func(uuids ...string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, u := range uuids {
			if handled[u] > 0 {
				n++
			}
		}
		return n
	}
	runRouter(t, b, policy, "billing", lost, h, logger)
	runRouter(t, b, policy, "shipping", kept, h, logger)

	// publish publishes a message to topic, again until Redis takes it.
	var uuids []string
	publish := func(topic string) {
		t.Helper()
		msg := message.NewMessage(watermill.NewUUID(), []byte("payload"))
		require.Eventually(t, func() bool { return b.Publisher().Publish(topic, msg) == nil }, 6*waitFor, 50*time.Millisecond, "%s never took a message", topic)
		uuids = append(uuids, msg.UUID)
	}
	publish(lost)
	publish(kept)
	require.Eventually(t, func() bool { return count(uuids...) == 2 }, waitFor, tick)

	require.NoError(t, cluster.Kill(lostMaster))
	killed := time.Now()
	require.Error(t, b.Publisher().Publish(lost, message.NewMessage(watermill.NewUUID(), nil)), "a stream of the dead master took a message")

	if fullCoverage {
		// Once the master is marked failed, no stream takes anything.
		require.Eventually(t, func() bool {
			err := b.Publisher().Publish(kept, message.NewMessage(watermill.NewUUID(), nil))
			return err != nil && strings.Contains(err.Error(), "CLUSTERDOWN")
		}, 3*waitFor, 50*time.Millisecond, "the cluster never went down")
		t.Logf("full coverage: CLUSTERDOWN on every stream %v after the kill (node timeout %v)", time.Since(killed), nodeTimeout)
	} else {
		// The other masters' streams go on, long after the node timeout.
		for range 5 {
			publish(kept)
		}
		require.Eventually(t, func() bool { return count(uuids...) == len(uuids) }, waitFor, tick, "a stream of a live master stopped")
		deadline := killed.Add(2 * nodeTimeout)
		for time.Now().Before(deadline) {
			publish(kept)
		}
		require.Eventually(t, func() bool { return count(uuids...) == len(uuids) }, waitFor, tick, "a stream of a live master stopped after the node timeout")
	}
	// While the master is down, messages for its streams wait in the
	// producer; once it is back they all go through.
	done := make(chan struct{})
	go func() {
		defer close(done)
		publish(lost)
		publish(kept)
	}()

	require.NoError(t, cluster.Restart(lostMaster))
	restarted := time.Now()
	<-done
	t.Logf("master restarted %v after the kill; a message for its stream went through %v after the restart", restarted.Sub(killed), time.Since(restarted))
	require.Eventually(t, func() bool { return count(uuids...) == len(uuids) }, 3*waitFor, tick, "not every message was handled after the restart")
	t.Logf("every message handled %v after the restart", time.Since(restarted))
	// The restarted master read its streams back from the append-only
	// file: the entry handled before the kill, the one after.
	require.EqualValues(t, 2, xlen(t, client, lost))
	require.Eventually(t, func() bool {
		return pending(client, lost, lost+".billing") == 0 && pending(client, kept, kept+".shipping") == 0
	}, waitFor, tick, "entries left pending")
	mu.Lock()
	defer mu.Unlock()
	for _, u := range uuids {
		require.Equal(t, 1, handled[u], "message %s handled %d times", u, handled[u])
	}
}
