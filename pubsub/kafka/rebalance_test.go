package kafka_test

import (
	"errors"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// A consumer joining the tier's group while a message is held there must
// not wait for the hold: the rebalance completes long before the message is
// due, and the message is still delivered exactly once, not early.
func TestKafka_heldMessageDoesNotStallRebalance(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	const delay = 15 * time.Second
	policy := tiered.Policy{Delays: []time.Duration{delay}, MaxAttempts: 2}
	topic := kafkatest.Topic(t)
	fail := func(_ *message.Message, attempt int) error {
		if attempt == 1 {
			return errors.New("transient")
		}
		return nil
	}
	a := newHarness(t, b, topic, "billing", policy, fail)
	tierGroup := a.handler.Topics.Group(a.handler.Topics.Tiers[0])

	msg := message.NewMessage(watermill.NewUUID(), []byte("order"))
	a.publish(msg)
	first := a.waitCalls(1)[0]
	require.Eventually(t, func() bool { return recordCount(t, env.Brokers, a.handler.Topics.Tiers[0]) == 1 }, 30*time.Second, 20*time.Millisecond)
	waitGroup(t, env.Brokers, tierGroup, 1)

	// The second consumer joins every group of the handler.
	joined := time.Now()
	bb := newHarness(t, b, topic, "billing", policy, fail)
	waitGroup(t, env.Brokers, tierGroup, 2)
	rebalanced := time.Now()
	t.Logf("tier group rebalanced in %v with a message held for %v", rebalanced.Sub(joined), delay)
	require.True(t, rebalanced.Before(first.at.Add(delay)),
		"the rebalance finished at %v, after the held message was due (%v): it waited for the hold", rebalanced, first.at.Add(delay))

	// Exactly one tier delivery, at or after its due time, in either consumer.
	var tierCalls []call
	require.Eventually(t, func() bool {
		ca, _ := a.snapshot()
		cb, _ := bb.snapshot()
		tierCalls = nil
		for _, c := range append(ca, cb...) {
			if c.topic == a.handler.Topics.Tiers[0] {
				tierCalls = append(tierCalls, c)
			}
		}
		return len(tierCalls) >= 1
	}, 60*time.Second, 20*time.Millisecond)
	require.False(t, tierCalls[0].at.Before(tierCalls[0].due), "delivered %v before due %v", tierCalls[0].at, tierCalls[0].due)
	require.False(t, tierCalls[0].at.Before(first.at.Add(delay)), "delivered before the tier delay passed")

	// Once the delivery is committed, no second delivery can follow.
	admin, err := sarama.NewClusterAdmin(env.Brokers, kafkatest.SaramaConfig())
	require.NoError(t, err)
	defer admin.Close()
	require.Eventually(t, func() bool {
		offsets, err := admin.ListConsumerGroupOffsets(tierGroup, nil)
		if err != nil {
			return false
		}
		for _, parts := range offsets.Blocks {
			for _, blk := range parts {
				if blk.Offset == 1 {
					return true
				}
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond, "tier offset never committed")
	ca, _ := a.snapshot()
	cb, _ := bb.snapshot()
	n := 0
	for _, c := range append(ca, cb...) {
		if c.topic == a.handler.Topics.Tiers[0] {
			n++
		}
	}
	require.Equal(t, 1, n, "the held message must be handled once from the tier")
}

// waitGroup waits until group is stable with n members.
func waitGroup(t *testing.T, brokers []string, group string, n int) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, kafkatest.SaramaConfig())
	require.NoError(t, err)
	defer admin.Close()
	var last string
	require.Eventually(t, func() bool {
		desc, err := admin.DescribeConsumerGroups([]string{group})
		if err != nil || len(desc) != 1 {
			return false
		}
		last = desc[0].State
		return desc[0].State == "Stable" && len(desc[0].Members) == n
	}, 60*time.Second, 50*time.Millisecond, "group %s never stable with %d members (last state %q)", group, n, last)
}
