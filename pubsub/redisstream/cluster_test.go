package redisstream_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// newClusterClient returns a client of the tests' Redis Cluster (see
// redistest.ClusterAddrs), closed when the test ends, after it deleted on
// every master the keys named by the test's redistest.Name calls (the
// cluster may be shared).
func newClusterClient(t *testing.T, addrs []string) *redis.ClusterClient {
	t.Helper()
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { _ = client.Close() })
	t.Cleanup(func() {
		ctx := context.Background()
		_ = client.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			iter := node.Scan(ctx, 0, redistest.Pattern(t), 100).Iterator()
			for iter.Next(ctx) {
				_ = node.Del(ctx, iter.Val()).Err()
			}
			return nil
		})
	})
	return client
}

// masterOf returns the address of the master that serves key.
func masterOf(t *testing.T, client *redis.ClusterClient, key string) string {
	t.Helper()
	node, err := client.MasterForKey(context.Background(), key)
	require.NoError(t, err)
	return node.Options().Addr
}

// spreadTopics returns the topics of handler on a new main topic whose
// main, first tier and dead-letter streams are served by three different
// masters, so that a test on them crosses nodes wherever it can.
func spreadTopics(t *testing.T, client *redis.ClusterClient, policy tiered.Policy, handler string) tiered.Topics {
	t.Helper()
	for range 200 { // each try succeeds with probability 6/27 on 3 masters
		topics, err := policy.Topics(redistest.Name(t, "orders"), handler, nil)
		require.NoError(t, err)
		seen := map[string]bool{}
		for _, name := range []string{topics.Main, topics.Tiers[0], topics.DLQ} {
			seen[masterOf(t, client, name)] = true
		}
		if len(seen) == 3 {
			return topics
		}
	}
	t.Fatal("no topic name puts main, tier and dead-letter streams on three masters")
	return tiered.Topics{}
}

// TestCluster_handlerStreamsOnThreeMasters: a message that fails on the
// main topic, fails again in the tier and then fails permanently goes
// through main, tier and dead-letter streams that three different masters
// serve: nothing in the backend needs a handler's streams on one node.
func TestCluster_handlerStreamsOnThreeMasters(t *testing.T) {
	t.Parallel()
	client := newClusterClient(t, redistest.ClusterAddrs(t))
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{MaxIdleTime: testIdle, ClaimInterval: testInterval}, logger)
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 3}
	topics := spreadTopics(t, client, policy, "billing")

	var rec recorder
	_, handler := runRouter(t, b, policy, "billing", topics.Main, func(msg *message.Message) error {
		if rec.record(msg) == 3 {
			return tiered.Permanent(errors.New("card declined"))
		}
		return errors.New("try later")
	}, logger)
	require.Equal(t, topics, handler.Topics)

	require.NoError(t, b.Publisher().Publish(topics.Main, message.NewMessage("m1", []byte("one"))))
	dead := waitStream(t, client, topics.DLQ, 1)
	require.Equal(t, "m1", dead[0].UUID)
	require.Equal(t, []string{topics.Main, topics.Tiers[0], topics.Tiers[0]}, rec.topics())
	for _, name := range []string{topics.Main, topics.Tiers[0]} {
		require.Eventually(t, func() bool { return pending(client, name, topics.Group(name)) == 0 }, waitFor, tick, "%s left pending", name)
	}
	require.Empty(t, errorLogs(logger))
}

// TestCluster_heldMessageIsNotClaimed runs two routers with the same
// handler on a Redis Cluster (two consumers in each group, the main and
// tier streams on different masters) while a message waits in a tier three
// times longer than MaxIdleTime: it stays with the consumer that read it,
// and runs once.
func TestCluster_heldMessageIsNotClaimed(t *testing.T) {
	t.Parallel()
	client := newClusterClient(t, redistest.ClusterAddrs(t))
	logger := newLogger(t)
	config := redisstream.Config{MaxIdleTime: testIdle, ClaimInterval: testInterval}
	b1 := newBackend(t, client, config, logger)
	b2 := newBackend(t, client, config, logger)
	policy := tiered.Policy{Delays: []time.Duration{testDelay}}
	topics := spreadTopics(t, client, policy, "billing")
	tier, group := topics.Tiers[0], topics.Group(topics.Tiers[0])

	var rec recorder
	h := func(msg *message.Message) error {
		rec.record(msg)
		if message.SubscribeTopicFromCtx(msg.Context()) == topics.Main {
			return errors.New("try later")
		}
		return nil
	}
	runRouter(t, b1, policy, "billing", topics.Main, h, logger)
	runRouter(t, b2, policy, "billing", topics.Main, h, logger)

	published := time.Now().Round(0) // the wall clock, as the due time
	require.NoError(t, b1.Publisher().Publish(topics.Main, message.NewMessage("m1", []byte("one"))))

	// Until the tier attempt ran, the entry stays pending on the one
	// consumer that got it, delivered once.
	var holder string
	poll := time.NewTicker(tick)
	defer poll.Stop()
	deadline := time.After(testDelay + waitFor)
	for rec.count() < 2 {
		select {
		case <-poll.C:
		case <-deadline:
			t.Fatal("the tier attempt never ran")
		}
		xp, err := client.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: tier, Group: group, Start: "-", End: "+", Count: 10}).Result()
		if err != nil || len(xp) == 0 || rec.count() >= 2 {
			continue // no group yet, or not read yet, or done
		}
		require.Len(t, xp, 1)
		if holder == "" {
			holder = xp[0].Consumer
		}
		require.Equal(t, holder, xp[0].Consumer, "the held entry was claimed by another consumer after %v", xp[0].Idle)
		require.EqualValues(t, 1, xp[0].RetryCount, "the held entry was delivered again")
	}
	require.NotEmpty(t, holder, "the entry was never seen pending")
	require.GreaterOrEqual(t, time.Since(published), testDelay, "the tier attempt ran early")

	require.Never(t, func() bool { return rec.count() > 2 }, testIdle+5*testInterval, tick, "the message ran twice")
	require.Eventually(t, func() bool { return pending(client, tier, group) == 0 }, waitFor, tick)
	require.Equal(t, []string{topics.Main, tier}, rec.topics())
}
