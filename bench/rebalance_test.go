package bench_test

import (
	"context"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// BenchmarkRebalance is figure 6 (Kafka only): how long a consumer group
// takes to rebalance when a second consumer joins, timed from the second
// consumer's start until the group is Stable with 2 members
// (ClusterAdmin.DescribeConsumerGroups, polled every 20ms):
//
//   - tiered: a handler's 1h tier group while it holds a message (the
//     second consumer is a second router with the same handler);
//   - plain-held: a plain watermill-kafka subscriber's group while it
//     holds a message unacked for hold (10s), then acks it;
//   - plain-idle: the same with nothing held: the floor of a join.
//
// Both sides use kafkatest's tuning (300ms heartbeats) with a 30s rebalance
// timeout, so that the hold, not the timeout, bounds the plain case. A
// rebalance still unfinished after joinCap counts as joinCap.
func BenchmarkRebalance(b *testing.B) {
	const (
		tierDelay = time.Hour
		hold      = 10 * time.Second
		joinCap   = 20 * time.Second
	)
	for _, name := range backendNames() {
		if name != "kafka" {
			continue
		}
		b.Run(name, func(b *testing.B) {
			rg := kafkaRig(b, kafkatest.Start(b).Brokers, func(c *sarama.Config) {
				c.Consumer.Group.Rebalance.Timeout = 30 * time.Second
			})

			// Tiered: one message held in a 1h tier.
			topic, handler := rg.topic("rebalance"), "rebalance-"+shortID()
			p := newProbe(topic)
			policy := tiered.Policy{Delays: []time.Duration{tierDelay}, MaxAttempts: 2}
			first := startTiered(b, rg, handler, topic, policy, p.handle)
			tierGroup := first.handler.Topics.Group(first.handler.Topics.Tiers[0])
			if _, ok := waitGroup(b, rg, tierGroup, 1, waitLimit); !ok {
				b.Fatalf("tier group %s never joined", tierGroup)
			}
			if err := rg.batch.Publish(topic, newMessages(1, always)...); err != nil {
				b.Fatal(err)
			}
			waitRecords(b, rg, first.handler.Topics.Tiers[0], 1)
			time.Sleep(time.Second) // the tier consumer fetches the record and holds it
			start := time.Now()
			startTiered(b, rg, handler, topic, policy, p.handle)
			tieredJoin, tieredOK := waitGroupSince(b, rg, tierGroup, 2, start, joinCap)

			// Plain watermill-kafka: one message held unacked.
			plainHeld, heldOK := plainJoin(b, rg, hold, joinCap)
			plainIdle, idleOK := plainJoin(b, rg, 0, joinCap)

			b.ReportMetric(tieredJoin.Seconds(), "tiered-s")
			b.ReportMetric(plainHeld.Seconds(), "plain-held-s")
			b.ReportMetric(plainIdle.Seconds(), "plain-idle-s")
			b.ReportMetric(hold.Seconds(), "hold-s")
			logf(b, "tiered (message held in a %v tier): %v (finished: %v); plain holding a message %v: %v (finished: %v); plain, nothing held: %v (finished: %v)",
				tierDelay, tieredJoin.Round(time.Millisecond), tieredOK, hold, plainHeld.Round(time.Millisecond), heldOK,
				plainIdle.Round(time.Millisecond), idleOK)
		})
	}
}

// plainJoin subscribes a plain watermill-kafka subscriber from the backend,
// holds the first message for hold (publishes none when hold is 0), then
// times a second subscriber of the same group joining.
func plainJoin(b *testing.B, rg *rig, hold time.Duration, limit time.Duration) (time.Duration, bool) {
	b.Helper()
	topic, group := rg.topic("plain-rebalance"), "plain-rebalance-"+shortID()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	subscribe := func() <-chan *message.Message {
		sub, err := rg.plain(group, topic)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = sub.Close() })
		ch, err := sub.Subscribe(ctx, topic)
		if err != nil {
			b.Fatal(err)
		}
		return ch
	}
	ch := subscribe()
	if _, ok := waitGroup(b, rg, group, 1, waitLimit); !ok {
		b.Fatalf("group %s never joined", group)
	}
	if hold > 0 {
		if err := rg.batch.Publish(topic, newMessages(1, nil)...); err != nil {
			b.Fatal(err)
		}
		select {
		case msg := <-ch:
			time.AfterFunc(hold, func() { msg.Ack() })
		case <-time.After(waitLimit):
			b.Fatal("the plain subscriber received nothing")
		}
	}
	start := time.Now()
	subscribe()
	return waitGroupSince(b, rg, group, 2, start, limit)
}

// waitGroup polls until group is Stable with n members and returns how
// long that took, or limit and false.
func waitGroup(b *testing.B, rg *rig, group string, n int, limit time.Duration) (time.Duration, bool) {
	b.Helper()
	return waitGroupSince(b, rg, group, n, time.Now(), limit)
}

// waitGroupSince is waitGroup timed from start.
func waitGroupSince(b *testing.B, rg *rig, group string, n int, start time.Time, limit time.Duration) (time.Duration, bool) {
	b.Helper()
	for time.Since(start) < limit {
		desc, err := rg.admin.DescribeConsumerGroups([]string{group})
		if err == nil && len(desc) == 1 && desc[0].State == "Stable" && len(desc[0].Members) == n {
			return time.Since(start), true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return limit, false
}

// waitRecords waits until topic holds n records.
func waitRecords(b *testing.B, rg *rig, topic string, n int64) {
	b.Helper()
	client, err := sarama.NewClient(rg.brokers, kafkatest.SaramaConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	for deadline := time.Now().Add(waitLimit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		newest, err := client.GetOffset(topic, 0, sarama.OffsetNewest)
		if err == nil && newest >= n {
			return
		}
	}
	b.Fatalf("%s never held %d records", topic, n)
}
