package redisstream_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// The backend on a redis.ClusterClient: a handler's main, tier and
// dead-letter streams hash to different slots, on different masters, and
// every command the backend and watermill-redisstream send names one
// stream, so nothing needs a hash tag.

// TestCluster_streamsOfAHandlerSpreadOverMasters walks a message through
// every tier to the dead-letter stream, on streams that live on at least
// two masters.
func TestCluster_streamsOfAHandlerSpreadOverMasters(t *testing.T) {
	t.Parallel()
	client := newClusterClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic := redistest.Name(t, "orders")
	policy := tiered.Policy{Delays: []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond}, MaxAttempts: 4}

	var rec recorder
	_, h := runRouter(t, b, policy, "billing", topic, func(msg *message.Message) error {
		rec.record(msg)
		return errors.New("boom")
	}, logger)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one"))))
	dlq := waitStream(t, client, h.Topics.DLQ, 1)[0]
	require.Equal(t, "m1", dlq.UUID)
	require.Contains(t, dlq.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "no attempts left")
	require.Equal(t, []string{topic, h.Topics.Tiers[0], h.Topics.Tiers[1], h.Topics.Tiers[2]}, rec.topics())

	masters := map[string]bool{}
	for _, stream := range append([]string{topic, h.Topics.DLQ}, h.Topics.Tiers...) {
		masters[masterOf(t, client, stream)] = true
	}
	require.GreaterOrEqual(t, len(masters), 2, "the handler's streams are on more than one master")
	require.Empty(t, errorLogs(logger))
}

// TestCluster_heldEntriesStayWithTheirConsumer: two consumers in one group
// on the cluster; a held entry, and those read ahead behind it, are never
// claimed by the other.
func TestCluster_heldEntriesStayWithTheirConsumer(t *testing.T) {
	t.Parallel()
	testHeldEntriesStayWithTheirConsumer(t, newClusterClient(t))
}

// TestCluster_deadConsumersHeldEntryComesBack: on the cluster too, a dead
// consumer's held entry is claimed after MaxIdleTime, not a tier delay.
func TestCluster_deadConsumersHeldEntryComesBack(t *testing.T) {
	t.Parallel()
	testDeadConsumersHeldEntryComesBack(t, newClusterClient(t))
}

// TestCluster_undecodableEntryGoesToDLQ: the dead letter of an entry read
// from one master is written to a stream on whichever master holds it.
func TestCluster_undecodableEntryGoesToDLQ(t *testing.T) {
	t.Parallel()
	client := newClusterClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic, dlq := redistest.Name(t, "events"), redistest.Name(t, "events.dlq")
	ctx := context.Background()
	id, err := client.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: map[string]any{"foo": "bar"}}).Result()
	require.NoError(t, err)
	require.NoError(t, b.Prepare(ctx, tiered.Topics{Main: topic, DLQ: dlq}))

	_, ch := subscribe(t, b, tiered.SubscribeParams{Group: "g", Topic: topic, DLQ: dlq})
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", nil)))
	m := receive(t, ch)
	require.Equal(t, "m1", m.UUID)
	m.Ack()
	dead := waitStream(t, client, dlq, 1)[0]
	require.Equal(t, id, dead.Metadata.Get(tiered.KeyRedisEntryID))
	require.Equal(t, tiered.OriginUUID("redis", topic, id), dead.UUID)
}

// masterOf returns the address of the master that serves key's slot.
func masterOf(t *testing.T, client *redis.ClusterClient, key string) string {
	t.Helper()
	ctx := context.Background()
	slot, err := client.ClusterKeySlot(ctx, key).Result()
	require.NoError(t, err)
	slots, err := client.ClusterSlots(ctx).Result()
	require.NoError(t, err)
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) {
			return s.Nodes[0].Addr
		}
	}
	t.Fatalf("no master serves slot %d", slot)
	return ""
}
