package dlq_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// retryKeys are keys that a redriven message must not carry.
var retryKeys = []string{
	tiered.KeyAttempt, tiered.KeyOriginalTopic, tiered.KeyHandler, tiered.KeyFirstFailure, tiered.KeyLastFailure,
	tiered.KeyDueAt, tiered.KeyTier, tiered.KeyLastError, tiered.KeyKafkaPartition, tiered.KeyKafkaOffset, tiered.KeyKafkaKey,
	wmiddleware.ReasonForPoisonedKey, wmiddleware.PoisonedTopicKey, wmiddleware.PoisonedHandlerKey, wmiddleware.PoisonedSubscriberKey,
}

func TestRedrive_toOriginalTopicKeepsIdentityAndClearsRetryMetadata(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		uuids := b.deadLetters(topics, letter{Key: "alice", User: "1", Payload: "p1"}, letter{Key: "bob", User: "2", Payload: "p2"}, letter{Key: "alice", User: "3", Payload: "p3", Redrives: 1})
		dead := map[string]*dlq.Message{}
		for _, m := range b.all(topics.DLQ, dlq.Filter{}) {
			dead[m.UUID] = m
		}
		before := time.Now()

		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ})
		require.NoError(t, err)
		require.Equal(t, "original", res.Name)
		require.False(t, res.Resumed)
		require.EqualValues(t, 3, res.Moved)
		require.EqualValues(t, 3, res.Selected)
		require.Zero(t, res.Skipped)
		require.Equal(t, map[string]int64{topics.Main: 3}, res.Targets)

		moved := b.all(topics.Main, dlq.Filter{})
		require.Equal(t, sorted(uuids), uuidsOf(moved))
		for _, m := range moved {
			d := dead[m.UUID]
			require.Equal(t, d.Payload, m.Payload)
			require.Equal(t, d.Metadata.Get("user_note"), m.Metadata.Get("user_note"), "user metadata kept")
			if b.isKafka() {
				require.Equal(t, d.Key, m.Key, "record key kept")
			}
			for _, k := range retryKeys {
				require.NotContains(t, m.Metadata, k, "retry metadata cleared")
			}
			require.Equal(t, strconv.Itoa(d.Redrives()+1), m.Metadata.Get(tiered.KeyRedriveCount))
			at, err := strconv.ParseInt(m.Metadata.Get(tiered.KeyRedriveTime), 10, 64)
			require.NoError(t, err)
			require.WithinRange(t, time.UnixMilli(at), before.Truncate(time.Millisecond), time.Now())
		}

		d, err := b.client.Depth(ctx, topics.DLQ)
		require.NoError(t, err)
		require.EqualValues(t, 3, d.Messages, "a redrive never deletes")

		again, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ})
		require.NoError(t, err)
		require.True(t, again.Resumed)
		require.Zero(t, again.Moved, "the checkpoint passed them")

		b.deadLetters(topics, letter{})
		later, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ})
		require.NoError(t, err)
		require.EqualValues(t, 1, later.Moved, "only what came since")
	})
}

func TestRedrive_toFirstTier(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		uuids := b.deadLetters(topics, letter{Key: "alice"}, letter{Key: "bob"})
		before := time.Now().Truncate(time.Millisecond)

		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, To: dlq.ToFirstTier})
		require.NoError(t, err)
		require.EqualValues(t, 2, res.Moved)
		require.Equal(t, map[string]int64{topics.Tiers[0]: 2}, res.Targets, "the shortest delay")

		moved := b.all(topics.Tiers[0], dlq.Filter{})
		require.Equal(t, sorted(uuids), uuidsOf(moved))
		for _, m := range moved {
			info, err := tiered.ReadInfo(m.Metadata)
			require.NoError(t, err, "the tier's handler takes it")
			require.Equal(t, 1, info.Attempt)
			require.Equal(t, 1, info.Tier)
			require.Equal(t, topics.Main, info.OriginalTopic)
			require.Equal(t, "billing", info.Handler)
			due := m.DueAt()
			require.WithinRange(t, due, before, time.Now(), "due at once")
			require.Equal(t, "1", m.Metadata.Get(tiered.KeyRedriveCount))
			require.NotContains(t, m.Metadata, wmiddleware.ReasonForPoisonedKey)
		}
	})
}

func TestRedrive_toNamedTopic(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		target := b.handler("replay").Main
		uuids := b.deadLetters(topics, letter{}, letter{})

		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, To: dlq.ToTopic, TargetTopic: target})
		require.NoError(t, err)
		require.Equal(t, "topic."+target, res.Name)
		require.EqualValues(t, 2, res.Moved)
		require.Equal(t, sorted(uuids), uuidsOf(b.all(target, dlq.Filter{})))
		require.Empty(t, b.all(topics.Main, dlq.Filter{}))
	})
}

func TestRedrive_exactlyTheFilteredSet(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		timeouts := b.deadLetters(topics, letter{Reason: "timeout 1"}, letter{Reason: "timeout 2"})
		declined := b.deadLetters(topics, letter{Reason: "card declined"})
		timeouts = append(timeouts, b.deadLetters(topics, letter{Reason: "timeout 3"})...)

		filter := dlq.Filter{Reason: "timeout"}
		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, Filter: filter})
		require.NoError(t, err)
		require.EqualValues(t, 3, res.Moved)
		require.EqualValues(t, 4, res.Scanned)
		require.Regexp(t, `^original\.filter-[0-9a-f]{8}$`, res.Name, "a filtered redrive has a checkpoint of its own")
		require.Equal(t, sorted(timeouts), uuidsOf(b.all(topics.Main, dlq.Filter{})))
		require.Len(t, res.Reasons, 1)
		require.Equal(t, "attempt N of N failed, no attempts left: timeout N", res.Reasons[0].Value)

		// The unfiltered redrive's checkpoint did not move.
		res, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, Filter: dlq.Filter{UUID: declined[0]}})
		require.NoError(t, err)
		require.EqualValues(t, 1, res.Moved)
	})
}

func TestRedrive_dryRunChangesNothing(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		b.deadLetters(topics, letter{Reason: "timeout"}, letter{Reason: "timeout"}, letter{Reason: "declined", Redrives: 3})
		var progress []dlq.RedriveProgress
		limiter := &countingLimiter{}

		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, DryRun: true, Limiter: limiter,
			OnProgress: func(p dlq.RedriveProgress) { progress = append(progress, p) }})
		require.NoError(t, err)
		require.True(t, res.DryRun)
		require.EqualValues(t, 2, res.Moved, "would move")
		require.EqualValues(t, 1, res.SkippedBy[dlq.SkipCapped])
		require.Len(t, res.Reasons, 2)
		require.Equal(t, dlq.RedriveProgress{Scanned: 3, Total: 3, Moved: 2, Skipped: 1}, progress[len(progress)-1])
		require.Zero(t, limiter.tokens.Load(), "a dry run is not paced")

		require.Empty(t, b.all(topics.Main, dlq.Filter{}), "nothing moved")
		res, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ})
		require.NoError(t, err)
		require.False(t, res.Resumed, "no checkpoint was committed")
		require.EqualValues(t, 2, res.Moved)
	})
}

func TestRedrive_capSkipsAndReports(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		fresh := b.deadLetters(topics, letter{Redrives: 2})
		capped := b.deadLetters(topics, letter{Redrives: 3}, letter{Redrives: 7})
		stub := b.deadLetters(topics, letter{Stub: true})

		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ})
		require.NoError(t, err)
		require.EqualValues(t, 1, res.Moved)
		require.EqualValues(t, 3, res.Skipped)
		require.Equal(t, map[string]int64{dlq.SkipCapped: 2, dlq.SkipStub: 1}, res.SkippedBy, "a stub has no payload to redrive")
		skipped := map[string][]string{}
		for _, s := range res.SkippedExamples {
			require.NotEmpty(t, s.ID)
			skipped[s.Why] = append(skipped[s.Why], s.UUID)
		}
		require.Equal(t, sorted(capped), sorted(skipped[dlq.SkipCapped]))
		require.Equal(t, stub, skipped[dlq.SkipStub])
		require.Equal(t, fresh, uuidsOf(b.all(topics.Main, dlq.Filter{})))

		res, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, Name: "raised-cap", MaxRedrives: 5})
		require.NoError(t, err)
		require.EqualValues(t, 2, res.Moved, "3 and 2 redrives are under 5")
		require.EqualValues(t, 1, res.SkippedBy[dlq.SkipCapped])
		require.EqualValues(t, 1, res.SkippedBy[dlq.SkipStub])
	})
}

// countingLimiter counts the tokens asked for, and fails once it was
// asked for failAfter (when set).
type countingLimiter struct {
	tokens    atomic.Int64
	calls     atomic.Int64
	failAfter int64
	cancel    context.CancelFunc
}

var errLimiter = errors.New("limiter says stop")

func (l *countingLimiter) WaitN(ctx context.Context, n int) error {
	l.calls.Add(1)
	if got := l.tokens.Add(int64(n)); l.failAfter > 0 && got > l.failAfter {
		if l.cancel != nil {
			l.cancel()
			return ctx.Err()
		}
		return errLimiter
	}
	return ctx.Err()
}

func TestRedrive_rateLimitTakesOneTokenPerMessage(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		b.manyDeadLetters(topics, 25)
		b.deadLetters(topics, letter{Redrives: 3})

		limiter := &countingLimiter{}
		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, Limiter: limiter})
		require.NoError(t, err)
		require.EqualValues(t, 25, res.Moved)
		require.EqualValues(t, 25, limiter.tokens.Load(), "one token per moved message, none for a skipped one")
		require.EqualValues(t, 25, limiter.calls.Load())

		// A limiter that fails ends the redrive with its error, and the
		// messages it held back move next time.
		topics2 := b.handler("shipping")
		uuids := b.manyDeadLetters(topics2, 10)
		stop := &countingLimiter{failAfter: 4}
		res, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics2.DLQ, Limiter: stop})
		require.ErrorIs(t, err, errLimiter)
		require.LessOrEqual(t, res.Moved, int64(4))
		res, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics2.DLQ})
		require.NoError(t, err)
		require.Equal(t, sorted(uuids), uuidsOf(b.all(topics2.Main, dlq.Filter{})), "each exactly once")
	})
}

func TestRedrive_maxStopsAndTheNextRunGoesOn(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		uuids := b.manyDeadLetters(topics, 5)

		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, Max: 2})
		require.NoError(t, err)
		require.EqualValues(t, 2, res.Moved)
		require.True(t, res.Interrupted)
		require.Len(t, b.all(topics.Main, dlq.Filter{}), 2)

		res, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ})
		require.NoError(t, err)
		require.True(t, res.Resumed)
		require.EqualValues(t, 3, res.Moved)
		require.False(t, res.Interrupted)
		require.Equal(t, sorted(uuids), uuidsOf(b.all(topics.Main, dlq.Filter{})))
	})
}

func TestRedrive_interruptedAndResumedMovesEverythingOnce(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		topics := b.handler("billing")
		const n = 5000 // several batches
		uuids := b.manyDeadLetters(topics, n)

		// Cut the redrive off at points inside and between batches,
		// as a kill would, until it finished.
		interrupted := 0
		for _, cut := range []int64{1, 2100, 2000, 3999, 0} {
			ctx, cancel := context.WithCancel(context.Background())
			limiter := &countingLimiter{failAfter: cut, cancel: cancel}
			res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, Limiter: limiter})
			cancel()
			if errors.Is(err, context.Canceled) {
				interrupted++
				require.NotNil(t, res)
				continue
			}
			require.NoError(t, err)
			break
		}
		require.GreaterOrEqual(t, interrupted, 3)
		moved := b.all(topics.Main, dlq.Filter{})
		count := map[string]int{}
		for _, m := range moved {
			count[m.UUID]++
		}
		require.Len(t, count, n, "every dead letter moved")
		for _, u := range uuids {
			require.Equal(t, 1, count[u], "moved exactly once: an interrupted batch was never published")
		}
	})
}

func TestRedrive_foreignRecords(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		b.rawRecord(topics.DLQ, map[string]string{"payload": "raw", "origin": "legacy"})
		b.deadLetters(topics, letter{})

		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ})
		require.NoError(t, err)
		if !b.isKafka() {
			require.EqualValues(t, 1, res.Moved)
			require.Equal(t, map[string]int64{dlq.SkipUndecodable: 1}, res.SkippedBy)
			return
		}
		require.EqualValues(t, 2, res.Moved, "a record without Watermill's header goes to the topic the dead-letter topic's name says")
		var raw *dlq.Message
		for _, m := range b.all(topics.Main, dlq.Filter{}) {
			if m.Foreign {
				raw = m
			}
		}
		require.NotNil(t, raw)
		require.Equal(t, "raw", string(raw.Payload))
		require.Equal(t, "raw-key", string(raw.Key))
		require.Equal(t, "legacy", raw.Metadata.Get("origin"))
		require.Equal(t, "1", raw.Metadata.Get(tiered.KeyRedriveCount))
	})
}

// TestRedrive_capHoldsThroughTheRetryMiddleware runs the whole loop: a
// handler dead-letters a message, a redrive sends it back, it fails
// again, and so on; the redrive count survives the retry middleware's
// clearing of retry metadata, so the fourth redrive skips it. Then the
// bug is fixed and a fresh dead letter redriven succeeds.
func TestRedrive_capHoldsThroughTheRetryMiddleware(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topic := b.topic("orders")
		var fixed atomic.Bool
		var mu sync.Mutex
		ok := map[string]int{}
		r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
		require.NoError(t, err)
		retrying, err := router.New(router.Config{Backend: b.backend, Policy: tiered.Policy{MaxAttempts: 1}}, nil)
		require.NoError(t, err)
		h, err := retrying.AddConsumerHandler(r, "billing", topic, func(msg *message.Message) error {
			if !fixed.Load() {
				return errors.New("bug")
			}
			mu.Lock()
			ok[msg.UUID]++
			mu.Unlock()
			return nil
		})
		require.NoError(t, err)
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = r.Run(runCtx) }()
		t.Cleanup(func() { stop(); <-done })
		<-r.Running()

		msg := message.NewMessage(watermill.NewUUID(), []byte("order"))
		require.NoError(t, b.backend.Publisher().Publish(topic, msg))
		waitDepth := func(n int64) {
			t.Helper()
			require.Eventually(t, func() bool {
				d, err := b.client.Depth(ctx, h.Topics.DLQ)
				return err == nil && d.Messages == n
			}, waitFor, 20*time.Millisecond, "dead-letter topic never held %d", n)
		}
		waitDepth(1)
		for cycle := 1; cycle <= 3; cycle++ {
			res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: h.Topics.DLQ})
			require.NoError(t, err)
			require.EqualValues(t, 1, res.Moved, "cycle %d", cycle)
			waitDepth(int64(1 + cycle))
		}
		var counts []int
		for _, m := range b.all(h.Topics.DLQ, dlq.Filter{}) {
			require.Equal(t, msg.UUID, m.UUID, "the same message every time")
			counts = append(counts, m.Redrives())
		}
		slices.Sort(counts) // Kafka lists partition after partition
		require.Equal(t, []int{0, 1, 2, 3}, counts, "its count went through the middleware")
		res, err := b.client.Redrive(ctx, dlq.RedriveParams{Topic: h.Topics.DLQ})
		require.NoError(t, err)
		require.Zero(t, res.Moved)
		require.Equal(t, map[string]int64{dlq.SkipCapped: 1}, res.SkippedBy, "the cap stops the loop")

		fixed.Store(true)
		second := message.NewMessage(watermill.NewUUID(), []byte("order 2"))
		fixed.Store(false)
		require.NoError(t, b.backend.Publisher().Publish(topic, second))
		waitDepth(5)
		fixed.Store(true)
		res, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: h.Topics.DLQ})
		require.NoError(t, err)
		require.EqualValues(t, 1, res.Moved)
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return ok[second.UUID] == 1
		}, waitFor, 20*time.Millisecond, "the redriven message succeeds once the bug is fixed")
	})
}
