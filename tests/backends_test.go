package tests_test

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmtests "github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// KeyMetadata is the metadata key that carries a message's ordering key in
// this suite. Backends that route by key (Kafka's record key) read it; the
// scenarios set it on every message they publish.
const KeyMetadata = "key"

// Backend describes one backend to the suite.
type Backend struct {
	// Name names the backend's subtests.
	Name string

	// New returns a fresh backend for t, closed when t ends. Every call
	// gives a backend of its own (its own consumer group names at least),
	// so parallel tests never share consumer groups.
	New func(t *testing.T) tiered.Backend

	// Features says what the backend guarantees beyond what every backend
	// must; scenarios skip or adapt what a backend does not promise.
	Features Features
}

// Features are the differences between backends that the scenarios need
// to know about. The zero value is the weakest backend.
type Features struct {
	// KeepsOrderPerKey: messages with the same key (KeyMetadata) that
	// enter a tier in some order are handled from it in that order.
	KeepsOrderPerKey bool

	// PersistentAcrossRestart: messages held in a tier when a router
	// closes are handled by the next router of the same handlers on the
	// same backend, and, the first router having closed cleanly, nothing
	// it acked is handled again.
	PersistentAcrossRestart bool

	// ConsumerGroups: subscriptions with the same group share the
	// messages of a topic (each goes to one of them); each group gets
	// every message.
	ConsumerGroups bool

	// DeliversAfterAck: a subscription hands on the next message of a
	// partition (stream) only once the one before was acked or nacked, so
	// a handler that blocks holds back the messages behind it. Without it
	// a blocking retry cannot slow the main topic, and
	// TestRetry_mainFlowNotBlockedByTier cannot catch one. (Watermill's
	// GoChannel alone hands every message on at once; the memory backend
	// relays them one at a time.)
	DeliversAfterAck bool

	// RestartReplaysHistory: a new subscription receives every message its
	// topic ever had, acked or not (Watermill's persistent GoChannel). A
	// restarted router handles everything again.
	RestartReplaysHistory bool

	// Watermill declares what Watermill's universal pub/sub suite may
	// expect from the holding subscriber over this backend (see
	// TestWatermillSuite).
	Watermill wmtests.Features
}

// backends returns every backend of the suite. Kafka runs on the brokers of
// KAFKA_BROKERS or on an embedded kfake broker; Redis on the server
// internal/redistest finds or starts, and on the Redis Cluster of
// REDIS_CLUSTER_ADDRS or one it starts.
func backends() []Backend {
	return []Backend{
		{
			Name: "mem",
			New:  newMemory,
			Features: Features{
				DeliversAfterAck:      true,
				RestartReplaysHistory: true,
				Watermill: wmtests.Features{
					// Every subscription gets every message: no groups.
					ConsumerGroups:      false,
					ExactlyOnceDelivery: false,
					// GoChannel sends each message on its own goroutine.
					GuaranteedOrder: false,
					// One GoChannel per test, shared by every
					// constructor call: it keeps every message for
					// the test's life...
					Persistent:            true,
					RequireSingleInstance: true,
					// ...and replays it to every new subscription.
					NewSubscriberReceivesOldMessages: true,
				},
			},
		},
		{
			Name: "kafka",
			New:  newKafka,
			Features: Features{
				KeepsOrderPerKey:        true,
				PersistentAcrossRestart: true,
				ConsumerGroups:          true,
				DeliversAfterAck:        true,
				Watermill: wmtests.Features{
					ConsumerGroups:      true,
					ExactlyOnceDelivery: false,
					// The suite's messages carry no key: all go to
					// one partition (the suite's topics have one
					// anyway), whose next record a consumer gets only
					// after the Ack. The group's members take turns.
					GuaranteedOrder: true,
					Persistent:      true,
					// The constructor without a group gives every
					// subscriber of a test the same group: a new one
					// resumes from the group's offsets.
					NewSubscriberReceivesOldMessages: false,
				},
			},
		},
		{
			Name:     "redis",
			New:      newRedis,
			Features: redisFeatures,
		},
		{
			// The same backend on a Redis Cluster of three masters: each
			// stream of a handler (main, tiers, dead letters) lives on
			// the master of its own hash slot.
			Name:     "redis-cluster",
			New:      newRedisCluster,
			Features: redisFeatures, // the same streams, spread over masters
		},
	}
}

// forEachBackend runs fn as a parallel subtest per backend.
func forEachBackend(t *testing.T, fn func(t *testing.T, b Backend)) {
	t.Helper()
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			fn(t, b)
		})
	}
}

func newMemory(t *testing.T) tiered.Backend {
	b := memory.New(watermill.NopLogger{})
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func newKafka(t *testing.T) tiered.Backend {
	env := kafkatest.Start(t)
	cfg := env.Config()
	// Three partitions, keyed: per-key order is something to keep, not a
	// given of a single partition.
	cfg.MainTopicPartitions = 3
	cfg.PartitionKey = func(_ string, msg *message.Message) (string, error) {
		return msg.Metadata.Get(KeyMetadata), nil
	}
	// Real brokers are shared by every test (and by earlier runs).
	cfg.ConsumerGroupPrefix = "t" + watermill.NewShortUUID()[:8] + "."
	return kafkatest.New(t, cfg)
}

func newRedis(t *testing.T) tiered.Backend {
	return newRedisOn(t, redis.NewClient(&redis.Options{Addr: redistest.Addr(t)}))
}

// newRedisCluster runs the Redis backend on the cluster of
// REDIS_CLUSTER_ADDRS, or on three masters that internal/redistest starts
// for this test binary (see TestMain).
func newRedisCluster(t *testing.T) tiered.Backend {
	return newRedisOn(t, redis.NewClusterClient(&redis.ClusterOptions{Addrs: redistest.ClusterAddrs(t)}))
}

// newRedisOn returns a Redis backend on client, closing both when t ends.
func newRedisOn(t *testing.T, client redis.UniversalClient) tiered.Backend {
	t.Cleanup(func() { _ = client.Close() })
	b, err := redisstream.New(context.Background(), redisstream.Config{
		Client: client,
		// Entries left pending by a closed consumer (read ahead, or held
		// in a tier) come back after this plus the tier delay; the
		// default minute is too long for a test.
		MaxIdleTime:     2 * time.Second,
		ClaimInterval:   200 * time.Millisecond,
		NackResendSleep: 50 * time.Millisecond,
		CloseTimeout:    5 * time.Second,
	}, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// uniqueTopic returns a topic name unique to t and this call, valid on
// every backend and short enough for tier names built on it.
func uniqueTopic(t testing.TB) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, t.Name())
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	return "t." + name + "." + watermill.NewShortUUID()[:8]
}

// groupFor derives a consumer group name from t: the same for every call
// within one test.
func groupFor(t testing.TB, suffix string) string {
	sum := sha1.Sum([]byte(t.Name()))
	return "g" + hex.EncodeToString(sum[:6]) + suffix
}

// perTest keeps one value per test, made on first use.
type perTest[V any] struct {
	mu   sync.Mutex
	vals map[string]V
}

func (p *perTest[V]) get(t *testing.T, make func() V) V {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vals == nil {
		p.vals = map[string]V{}
	}
	if v, ok := p.vals[t.Name()]; ok {
		return v
	}
	v := make()
	p.vals[t.Name()] = v
	return v
}

// redisFeatures are the Redis backend's, on one server and on a cluster.
var redisFeatures = Features{
	KeepsOrderPerKey:        true, // one stream per tier
	PersistentAcrossRestart: true,
	ConsumerGroups:          true,
	DeliversAfterAck:        true,
	Watermill: wmtests.Features{
		ConsumerGroups:      true,
		ExactlyOnceDelivery: false,
		// A stream is ordered, but consumers of one group share it:
		// order holds for one subscriber.
		GuaranteedOrder:                     true,
		GuaranteedOrderWithSingleSubscriber: true,
		Persistent:                          true,
		NewSubscriberReceivesOldMessages:    false,
	},
}
