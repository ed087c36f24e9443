package router_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/tiered"
)

var errBoom = errors.New("boom")

func ms(d time.Time) string { return strconv.FormatInt(d.UnixMilli(), 10) }

func fail(int, *message.Message) error { return errBoom }

func TestRetry_successPathTouchesNoTier(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute}}})
		h := e.handle("billing", "orders", func(int, *message.Message) error { return nil })
		tiers, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		e.settle()

		require.Equal(t, []call{{topic: "orders", at: 0}}, e.recorded())
		for _, tier := range tiers {
			tier.requireEmpty()
		}
		dlq.requireEmpty()
		acks, nacks := e.counts("orders")
		require.Equal(t, 1, acks)
		require.Zero(t, nacks)
	})
}

func TestRetry_failOnceThenSucceedFromTier1(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute}}})
		h := e.handle("billing", "orders", func(n int, _ *message.Message) error {
			if n == 1 {
				return errBoom
			}
			return nil
		})
		tiers, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", []byte("payload")))

		e.sleepUntil(10*time.Second - time.Millisecond)
		require.Len(t, e.recorded(), 1, "not handed to the handler before its due time")
		e.settle()

		require.Equal(t, []call{
			{topic: "orders", at: 0},
			{topic: "orders.billing.retry.10s", at: 10 * time.Second, attempt: "1", tier: "1"},
		}, e.recorded(), "exactly two calls: main, then tier 1 when due")
		tier1 := tiers[0].next()
		require.Equal(t, "m1", tier1.UUID)
		require.Equal(t, "payload", string(tier1.Payload))
		tiers[0].requireEmpty()
		tiers[1].requireEmpty()
		dlq.requireEmpty()
	})
}

func TestRetry_failAlwaysWalksEveryTierThenDLQ(t *testing.T) {
	s, m := time.Second, time.Minute
	tests := []struct {
		name      string
		policy    tiered.Policy
		wantCalls []call // handler calls, in order
		wantTiers []string
	}{
		{
			name:   "each tier once",
			policy: tiered.Policy{Delays: []time.Duration{10 * s, m, 5 * m}},
			wantCalls: []call{
				{topic: "orders", at: 0},
				{topic: "orders.billing.retry.10s", at: 10 * s, attempt: "1", tier: "1"},
				{topic: "orders.billing.retry.1m", at: 70 * s, attempt: "2", tier: "2"},
				{topic: "orders.billing.retry.5m", at: 370 * s, attempt: "3", tier: "3"},
			},
			wantTiers: []string{"orders.billing.retry.10s", "orders.billing.retry.1m", "orders.billing.retry.5m"},
		},
		{
			name:   "MaxAttempts > len(Delays): the last tier repeats",
			policy: tiered.Policy{Delays: []time.Duration{10 * s, m}, MaxAttempts: 5},
			wantCalls: []call{
				{topic: "orders", at: 0},
				{topic: "orders.billing.retry.10s", at: 10 * s, attempt: "1", tier: "1"},
				{topic: "orders.billing.retry.1m", at: 70 * s, attempt: "2", tier: "2"},
				{topic: "orders.billing.retry.1m", at: 130 * s, attempt: "3", tier: "2"},
				{topic: "orders.billing.retry.1m", at: 190 * s, attempt: "4", tier: "2"},
			},
			wantTiers: []string{"orders.billing.retry.10s", "orders.billing.retry.1m"},
		},
		{
			name:   "MaxAttempts < len(Delays)+1: later tiers unused",
			policy: tiered.Policy{Delays: []time.Duration{10 * s, m, 5 * m}, MaxAttempts: 2},
			wantCalls: []call{
				{topic: "orders", at: 0},
				{topic: "orders.billing.retry.10s", at: 10 * s, attempt: "1", tier: "1"},
			},
			wantTiers: []string{"orders.billing.retry.10s"},
		},
		{
			name:      "MaxAttempts 1: straight to the DLQ",
			policy:    tiered.Policy{Delays: []time.Duration{10 * s}, MaxAttempts: 1},
			wantCalls: []call{{topic: "orders", at: 0}},
			wantTiers: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, envConfig{policy: tt.policy})
				h := e.handle("billing", "orders", fail)
				require.Equal(t, tt.wantTiers, h.Topics.Tiers)
				require.Len(t, h.Tiers, len(tt.wantTiers), "one router handler per tier")
				_, dlq := e.collectAll(h.Topics)
				e.run()

				msg := message.NewMessage("m1", []byte(`{"order":42}`))
				msg.Metadata.Set("tenant", "acme")
				e.publish("orders", msg)
				got := dlq.next()
				e.settle()

				require.Equal(t, tt.wantCalls, e.recorded())
				dlq.requireEmpty()

				last := tt.wantCalls[len(tt.wantCalls)-1]
				attempts := len(tt.wantCalls)
				md := got.Metadata
				require.Equal(t, "m1", got.UUID, "same UUID on every hop")
				require.Equal(t, `{"order":42}`, string(got.Payload))
				require.Equal(t, "acme", md.Get("tenant"), "the producer's metadata is kept")
				require.Equal(t, strconv.Itoa(attempts), md.Get(tiered.KeyAttempt), "retry_attempt = MaxAttempts")
				require.Equal(t, "0", md.Get(tiered.KeyTier))
				require.Equal(t, "orders", md.Get(tiered.KeyOriginalTopic))
				require.Equal(t, "billing", md.Get(tiered.KeyHandler))
				require.Equal(t, ms(e.start), md.Get(tiered.KeyFirstFailure))
				require.Equal(t, ms(e.start.Add(last.at)), md.Get(tiered.KeyLastFailure))
				wantReason := fmt.Sprintf("attempt %d of %d failed, no attempts left: boom", attempts, attempts)
				require.Equal(t, wantReason, md.Get(wmiddleware.ReasonForPoisonedKey))
				require.Equal(t, wantReason, md.Get(tiered.KeyLastError))
				require.Equal(t, last.topic, md.Get(wmiddleware.PoisonedTopicKey), "topic_poisoned is where the last attempt was consumed")
				require.Equal(t, "billing", md.Get(wmiddleware.PoisonedHandlerKey))
				require.NotEmpty(t, md.Get(wmiddleware.PoisonedSubscriberKey))
				require.Empty(t, md.Get(tiered.KeyDueAt), "a dead letter has no due time")
			})
		})
	}
}

func TestRetry_permanentErrorGoesToDLQ(t *testing.T) {
	card := errors.New("card declined")
	deadLetterCardErrors := func(p tiered.ClassifyParams) tiered.Decision {
		if errors.Is(p.Err, card) {
			return tiered.DeadLetter
		}
		return tiered.Retry
	}
	tests := []struct {
		name       string
		classify   func(tiered.ClassifyParams) tiered.Decision
		err        func(n int) error
		wantCalls  int
		wantReason string
	}{
		{
			name:       "tiered.Permanent",
			err:        func(int) error { return tiered.Permanent(card) },
			wantCalls:  1,
			wantReason: "attempt 1 failed with an error that is not retried: card declined",
		},
		{
			name:       "tiered.Permanent wrapped with %w",
			err:        func(int) error { return fmt.Errorf("charge order 42: %w", tiered.Permanent(card)) },
			wantCalls:  1,
			wantReason: "attempt 1 failed with an error that is not retried: charge order 42: card declined",
		},
		{
			name:       "backoff.Permanent",
			err:        func(int) error { return backoff.Permanent(card) },
			wantCalls:  1,
			wantReason: "attempt 1 failed with an error that is not retried: card declined",
		},
		{
			name:       "classifier returns DeadLetter",
			classify:   deadLetterCardErrors,
			err:        func(int) error { return fmt.Errorf("charge: %w", card) },
			wantCalls:  1,
			wantReason: "attempt 1 failed with an error that is not retried: charge: card declined",
		},
		{
			name: "permanent error on a tier",
			err: func(n int) error {
				if n == 1 {
					return errBoom
				}
				return tiered.Permanent(card)
			},
			wantCalls:  2,
			wantReason: "attempt 2 failed with an error that is not retried: card declined",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, envConfig{policy: tiered.Policy{
					Delays:      []time.Duration{10 * time.Second, time.Minute},
					MaxAttempts: 5,
					Classify:    tt.classify,
				}})
				h := e.handle("billing", "orders", func(n int, _ *message.Message) error { return tt.err(n) })
				tiers, dlq := e.collectAll(h.Topics)
				e.run()

				e.publish("orders", message.NewMessage("m1", nil))
				got := dlq.next()
				deadLetteredAt := time.Since(e.start)
				e.settle()

				calls := e.recorded()
				require.Len(t, calls, tt.wantCalls)
				require.Equal(t, calls[len(calls)-1].at, deadLetteredAt, "dead-lettered at once, not after a tier delay")
				require.Equal(t, strconv.Itoa(tt.wantCalls), got.Metadata.Get(tiered.KeyAttempt))
				require.Equal(t, tt.wantReason, got.Metadata.Get(wmiddleware.ReasonForPoisonedKey))
				require.Equal(t, calls[len(calls)-1].topic, got.Metadata.Get(wmiddleware.PoisonedTopicKey))
				for i, tier := range tiers {
					if i < tt.wantCalls-1 {
						tier.next()
					}
					tier.requireEmpty()
				}
				dlq.requireEmpty()
			})
		})
	}
}

func TestRetry_classifierSeesAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var seen []tiered.ClassifyParams
		e := newEnv(t, envConfig{policy: tiered.Policy{
			Delays:      []time.Duration{10 * time.Second},
			MaxAttempts: 10,
			Classify: func(p tiered.ClassifyParams) tiered.Decision {
				mu.Lock()
				defer mu.Unlock()
				seen = append(seen, p)
				if p.Attempt == 3 {
					return tiered.DeadLetter
				}
				return tiered.Retry
			},
		}})
		h := e.handle("billing", "orders", func(n int, _ *message.Message) error { return fmt.Errorf("failure %d", n) })
		_, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		got := dlq.next()
		e.settle()

		mu.Lock()
		defer mu.Unlock()
		require.Len(t, seen, 3)
		for i, p := range seen {
			require.Equal(t, i+1, p.Attempt)
			require.EqualError(t, p.Err, fmt.Sprintf("failure %d", i+1))
			require.Equal(t, "m1", p.Message.UUID)
		}
		require.Equal(t, "3", got.Metadata.Get(tiered.KeyAttempt))
		require.Len(t, e.recorded(), 3)
	})
}

// failingPublisher fails the first failures[topic] publishes to a topic
// with a temporary error, and every publish to a topic of unpublishable
// with an error that wraps tiered.ErrUnpublishable.
type failingPublisher struct {
	message.Publisher
	mu            sync.Mutex
	failures      map[string]int
	unpublishable map[string]bool
	tries         map[string]int
}

func (p *failingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	if p.tries == nil {
		p.tries = map[string]int{}
	}
	p.tries[topic]++
	fail := p.failures[topic] > 0
	if fail {
		p.failures[topic]--
	}
	never := p.unpublishable[topic]
	p.mu.Unlock()
	if never {
		return fmt.Errorf("record too large for %s: %w", topic, tiered.ErrUnpublishable)
	}
	if fail {
		return errors.New("broker unavailable")
	}
	return p.Publisher.Publish(topic, msgs...)
}

func (p *failingPublisher) triesOn(topic string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tries[topic]
}

// flakyBackend is the memory backend with a publisher that fails for a
// while on some topics.
type flakyBackend struct {
	tiered.Backend
	pub *failingPublisher
}

func (b flakyBackend) Publisher() message.Publisher { return b.pub }

// A copy whose publish fails for a while is published again, with a
// back-off, until the broker takes it: the handler does not run again and
// the original is not Nacked.
func TestRetry_tierPublishFailureRetriesThePublishNotTheHandler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const tierFailures, dlqFailures = 3, 2
		mem := memory.New(nil)
		pub := &failingPublisher{
			Publisher: mem.Publisher(),
			failures:  map[string]int{"orders.billing.retry.10s": tierFailures, "orders.billing.dlq": dlqFailures},
		}
		e := newEnv(t, envConfig{backend: flakyBackend{Backend: mem, pub: pub}, policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}}})
		h := e.handle("billing", "orders", fail)
		tiers, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", []byte("payload")))
		got := dlq.next()
		e.settle()

		calls := e.recorded()
		require.Len(t, calls, 2, "one handler call per attempt: a failed publish does not run the handler again")
		require.Equal(t, "orders", calls[0].topic)
		require.Equal(t, "orders.billing.retry.10s", calls[1].topic)
		require.Greater(t, calls[1].at, 10*time.Second, "the tier copy went out after its publish retries, so it was due later")
		require.Equal(t, tierFailures+1, pub.triesOn("orders.billing.retry.10s"))
		require.Equal(t, dlqFailures+1, pub.triesOn("orders.billing.dlq"))

		for _, topic := range []string{"orders", "orders.billing.retry.10s"} {
			acks, nacks := e.counts(topic)
			require.Equal(t, 1, acks, topic)
			require.Zero(t, nacks, "%s: nothing Nacked while the publish was retried", topic)
		}
		require.Equal(t, "m1", tiers[0].next().UUID, "the tier copy was published once the broker was back")
		tiers[0].requireEmpty()
		require.Equal(t, "m1", got.UUID, "nothing lost: the message reached the DLQ")
		require.Equal(t, "payload", string(got.Payload))
		require.Equal(t, "2", got.Metadata.Get(tiered.KeyAttempt))
		dlq.requireEmpty()
	})
}

// A copy that can never be published (too large, say) does not stall its
// partition: a stub with the reason and the original's coordinates goes to
// the dead-letter topic, the original is acked, and the next message is
// handled.
func TestRetry_unpublishableCopyIsDeadLetteredAsAStub(t *testing.T) {
	tests := []struct {
		name          string
		policy        tiered.Policy
		unpublishable string
		wantCalls     int
	}{
		{"the tier copy", tiered.Policy{Delays: []time.Duration{10 * time.Second}}, "orders.billing.retry.10s", 1},
		{"the dead-letter copy", tiered.Policy{MaxAttempts: 1}, "orders.billing.dlq", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				mem := memory.New(nil)
				pub := &failingPublisher{Publisher: mem.Publisher(), unpublishable: map[string]bool{tt.unpublishable: true}}
				backend := flakyBackend{Backend: mem, pub: pub}
				if tt.unpublishable == "orders.billing.dlq" {
					// Only the full copy is too large: the stub fits.
					pub.unpublishable = nil
					backend.pub = &failingPublisher{Publisher: &tooLarge{Publisher: mem.Publisher(), topic: tt.unpublishable, limit: 100}}
				}
				e := newEnv(t, envConfig{backend: backend, policy: tt.policy})
				var mu sync.Mutex
				var handled []string
				h := e.handle("billing", "orders", func(n int, msg *message.Message) error {
					mu.Lock()
					handled = append(handled, message.SubscribeTopicFromCtx(msg.Context())+":"+msg.UUID)
					mu.Unlock()
					if string(msg.Payload) == "next" {
						return nil
					}
					return errBoom
				})
				_, dlq := e.collectAll(h.Topics)
				e.run()

				big := message.NewMessage("m1", []byte(strings.Repeat("x", 1000)))
				big.Metadata.Set("tenant", "acme")
				e.publish("orders", big)
				e.publish("orders", message.NewMessage("m2", []byte("next")))
				stub := dlq.next()
				e.settle()

				require.Equal(t, "m1", stub.UUID)
				require.Empty(t, stub.Payload, "the payload is left out")
				require.Equal(t, "1000", stub.Metadata.Get(tiered.KeyPayloadDropped))
				require.Equal(t, "acme", stub.Metadata.Get("tenant"), "small user metadata is kept")
				require.Equal(t, "0", stub.Metadata.Get(tiered.KeyTier))
				require.Equal(t, "1", stub.Metadata.Get(tiered.KeyAttempt))
				reason := stub.Metadata.Get(wmiddleware.ReasonForPoisonedKey)
				require.Contains(t, reason, "the copy for "+tt.unpublishable+" cannot be published")
				require.Contains(t, reason, "payload of 1000 bytes")
				require.Equal(t, "orders", stub.Metadata.Get(wmiddleware.PoisonedTopicKey))
				require.Equal(t, "billing", stub.Metadata.Get(wmiddleware.PoisonedHandlerKey))
				dlq.requireEmpty()

				mu.Lock()
				defer mu.Unlock()
				require.ElementsMatch(t, []string{"orders:m1", "orders:m2"}, handled, "the handler ran once for m1, and m2 behind it was handled")
				acks, nacks := e.counts("orders")
				require.Equal(t, 2, acks)
				require.Zero(t, nacks)
			})
		})
	}
}

// tooLarge refuses, as unpublishable, messages to topic whose payload is
// over limit bytes.
type tooLarge struct {
	message.Publisher
	topic string
	limit int
}

func (p *tooLarge) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if topic == p.topic && len(m.Payload) > p.limit {
			return fmt.Errorf("message of %d bytes: %w", len(m.Payload), tiered.ErrUnpublishable)
		}
	}
	return p.Publisher.Publish(topic, msgs...)
}

// When neither the copy nor its stub can be published (the dead-letter
// topic is gone too), the original is Nacked, each time later than the
// time before, and comes back; never a hot loop.
func TestRetry_nothingPublishableNacksWithAGrowingDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := memory.New(nil)
		pub := &failingPublisher{Publisher: mem.Publisher(), unpublishable: map[string]bool{
			"orders.billing.retry.10s": true, "orders.billing.dlq": true,
		}}
		e := newEnv(t, envConfig{backend: flakyBackend{Backend: mem, pub: pub}, policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}}})
		e.handle("billing", "orders", fail)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		select {
		case <-time.After(time.Minute):
		case <-e.runaway: // a hot loop keeps the bubble's clock from moving
			t.Fatalf("more than %d deliveries: the message is redelivered in a hot loop", runawayDelivers)
		}
		synctest.Wait()

		var at []time.Duration
		for _, c := range e.recorded() {
			at = append(at, c.at)
		}
		require.GreaterOrEqual(t, len(at), 4, "the message comes back: %v", at)
		require.Less(t, len(at), 10, "not a hot loop: %v", at)
		for i := 2; i < len(at); i++ {
			require.Greater(t, at[i]-at[i-1], at[i-1]-at[i-2], "each Nack later than the one before: %v", at)
		}
		_, nacks := e.counts("orders")
		require.Contains(t, []int{len(at) - 1, len(at)}, nacks, "every try ends in a Nack (the last may still be waiting for its own)")
	})
}

func TestRetry_forgedMainTopicMetadataIgnored(t *testing.T) {
	far := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		forged message.Metadata
	}{
		{
			name: "plausible retry metadata",
			forged: message.Metadata{
				tiered.KeyAttempt:       "99",
				tiered.KeyTier:          "7",
				tiered.KeyHandler:       "other",
				tiered.KeyOriginalTopic: "payments",
				tiered.KeyFirstFailure:  "1",
				tiered.KeyLastFailure:   "2",
				tiered.KeyDueAt:         ms(far),
				tiered.KeyLastError:     "forged",
				delay.DelayedForKey:     "1000h",
				delay.DelayedUntilKey:   far.Format(time.RFC3339),
				"reason_poisoned":       "forged",
				"topic_poisoned":        "forged",
			},
		},
		{
			name: "unparseable retry metadata",
			forged: message.Metadata{
				tiered.KeyAttempt:     "abc",
				tiered.KeyTier:        "x",
				tiered.KeyDueAt:       "soon",
				delay.DelayedForKey:   "forever",
				delay.DelayedUntilKey: "never",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute}}})
				h := e.handle("billing", "orders", func(n int, _ *message.Message) error {
					if n == 1 {
						return errBoom
					}
					return nil
				})
				tiers, dlq := e.collectAll(h.Topics)
				e.run()

				msg := message.NewMessage("m1", nil)
				for k, v := range tt.forged {
					msg.Metadata.Set(k, v)
				}
				msg.Metadata.Set("tenant", "acme")
				e.publish("orders", msg)
				got := tiers[0].next()
				e.settle()

				md := got.Metadata
				require.Equal(t, "1", md.Get(tiered.KeyAttempt))
				require.Equal(t, "1", md.Get(tiered.KeyTier))
				require.Equal(t, "billing", md.Get(tiered.KeyHandler))
				require.Equal(t, "orders", md.Get(tiered.KeyOriginalTopic))
				require.Equal(t, ms(e.start), md.Get(tiered.KeyFirstFailure))
				require.Equal(t, ms(e.start), md.Get(tiered.KeyLastFailure))
				require.Equal(t, ms(e.start.Add(10*time.Second)), md.Get(tiered.KeyDueAt))
				require.Equal(t, "boom", md.Get(tiered.KeyLastError))
				require.Equal(t, "10s", md.Get(delay.DelayedForKey))
				require.Equal(t, e.start.Add(10*time.Second).UTC().Format(time.RFC3339), md.Get(delay.DelayedUntilKey), "Watermill's delay keys, both")
				require.Empty(t, md.Get("reason_poisoned"))
				require.Empty(t, md.Get("topic_poisoned"))
				require.Equal(t, "acme", md.Get("tenant"))

				require.Equal(t, []call{
					// The handler never sees the forged retry keys.
					{topic: "orders", at: 0, attempt: "", tier: ""},
					{topic: "orders.billing.retry.10s", at: 10 * time.Second, attempt: "1", tier: "1"},
				}, e.recorded())
				tiers[1].requireEmpty()
				dlq.requireEmpty()
			})
		})
	}
}

func TestRetry_badTierMetadataGoesToDLQ(t *testing.T) {
	const tierTopic = "orders.billing.retry.10s"
	tests := []struct {
		name     string
		change   func(md message.Metadata)
		wantText string
	}{
		{"attempt not a number", func(md message.Metadata) { md.Set(tiered.KeyAttempt, "abc") }, `retry_attempt is "abc"`},
		{"attempt zero", func(md message.Metadata) { md.Set(tiered.KeyAttempt, "0") }, "retry_attempt is 0"},
		{"attempt missing", func(md message.Metadata) { delete(md, tiered.KeyAttempt) }, "retry_attempt is missing"},
		{"tier missing", func(md message.Metadata) { delete(md, tiered.KeyTier) }, "retry_tier is missing"},
		{"first failure not a time", func(md message.Metadata) { md.Set(tiered.KeyFirstFailure, "yesterday") }, `retry_first_failure_ms is "yesterday"`},
		{"last failure missing", func(md message.Metadata) { delete(md, tiered.KeyLastFailure) }, "retry_last_failure_ms is missing"},
		{"handler missing", func(md message.Metadata) { delete(md, tiered.KeyHandler) }, "retry_handler is missing"},
		{"original topic missing", func(md message.Metadata) { delete(md, tiered.KeyOriginalTopic) }, "retry_original_topic is missing"},
		{"no retry metadata at all", func(md message.Metadata) { tiered.ClearInfo(md) }, "retry_attempt is missing"},
		{"another handler's message", func(md message.Metadata) { md.Set(tiered.KeyHandler, "shipping") }, `belongs to handler "shipping" on topic "orders"`},
		{"another topic's message", func(md message.Metadata) { md.Set(tiered.KeyOriginalTopic, "payments") }, `on topic "payments", not "billing" on "orders"`},
		{"malformed due time", func(md message.Metadata) { md.Set(tiered.KeyDueAt, "soon") }, `retry_due_at_ms is "soon"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}, MaxAttempts: 5}})
				h := e.handle("billing", "orders", func(int, *message.Message) error { return nil })
				tiers, dlq := e.collectAll(h.Topics)
				e.run()

				msg := message.NewMessage("m1", []byte("payload"))
				tiered.Info{
					Attempt: 1, Tier: 1, OriginalTopic: "orders", Handler: "billing",
					FirstFailure: e.start, LastFailure: e.start, LastError: "boom",
				}.Write(msg.Metadata)
				msg.Metadata.Set(tiered.KeyDueAt, ms(e.start.Add(10*time.Second)))
				tt.change(msg.Metadata)
				e.publish(tierTopic, msg)
				got := dlq.next()
				e.settle()

				require.Empty(t, e.recorded(), "the handler never sees a message with bad retry metadata")
				require.Equal(t, "m1", got.UUID)
				require.Equal(t, "payload", string(got.Payload))
				reason := got.Metadata.Get(wmiddleware.ReasonForPoisonedKey)
				require.Contains(t, reason, "retry metadata on tier topic "+tierTopic+" cannot be used")
				require.Contains(t, reason, tt.wantText, "the reason names the key")
				require.Equal(t, tierTopic, got.Metadata.Get(wmiddleware.PoisonedTopicKey))
				require.Equal(t, "billing", got.Metadata.Get(wmiddleware.PoisonedHandlerKey))
				require.Equal(t, "0", got.Metadata.Get(tiered.KeyTier))
				acks, nacks := e.counts(tierTopic)
				require.Equal(t, 1, acks, "the bad message is acked once it is in the DLQ")
				require.Zero(t, nacks, "no redelivery loop")
				tiers[0].next() // the message the test published
				tiers[0].requireEmpty()
				dlq.requireEmpty()
			})
		})
	}
}

func TestRetry_oversizedErrorTextBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		huge := func(n int) error {
			// 100 KB of multi-byte text: cutting it anywhere but on a rune
			// boundary gives invalid UTF-8.
			return fmt.Errorf("attempt %d: %s", n, strings.Repeat("é支😀", 100*1024/9))
		}
		e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}}})
		h := e.handle("billing", "orders", func(n int, _ *message.Message) error { return huge(n) })
		tiers, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		tier := tiers[0].next()
		dead := dlq.next()
		e.settle()

		require.Greater(t, len(huge(1).Error()), 100*1000)
		for _, v := range []struct{ name, value string }{
			{"tier retry_last_error", tier.Metadata.Get(tiered.KeyLastError)},
			{"DLQ retry_last_error", dead.Metadata.Get(tiered.KeyLastError)},
			{"DLQ reason_poisoned", dead.Metadata.Get(wmiddleware.ReasonForPoisonedKey)},
		} {
			require.LessOrEqual(t, len(v.value), tiered.MaxErrorBytes, v.name)
			require.Greater(t, len(v.value), tiered.MaxErrorBytes-10, "%s: cut, not dropped", v.name)
			require.True(t, utf8.ValidString(v.value), "%s is valid UTF-8", v.name)
		}
		require.True(t, strings.HasPrefix(tier.Metadata.Get(tiered.KeyLastError), "attempt 1: é支😀"))
		require.True(t, strings.HasPrefix(dead.Metadata.Get(tiered.KeyLastError), "attempt 2 of 2 failed, no attempts left: attempt 2: é支😀"))
		require.NotContains(t, dead.Metadata.Get(tiered.KeyLastError), "attempt 1", "replaced, not appended")
	})
}

func TestRetry_panickingHandlerGoesToTier1(t *testing.T) {
	tests := []struct {
		name       string
		middleware []message.HandlerMiddleware
	}{
		{"without Recoverer", nil},
		{"with Watermill's Recoverer on the router", []message.HandlerMiddleware{wmiddleware.Recoverer}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, envConfig{middleware: tt.middleware, policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}}})
				h := e.handle("billing", "orders", func(n int, _ *message.Message) error {
					if n == 1 {
						panic("kaboom")
					}
					return nil
				})
				tiers, dlq := e.collectAll(h.Topics)
				e.run()

				e.publish("orders", message.NewMessage("m1", nil))
				got := tiers[0].next()
				e.settle()

				require.Contains(t, got.Metadata.Get(tiered.KeyLastError), "kaboom")
				require.Equal(t, []call{
					{topic: "orders", at: 0},
					{topic: "orders.billing.retry.10s", at: 10 * time.Second, attempt: "1", tier: "1"},
				}, e.recorded())
				acks, nacks := e.counts("orders")
				require.Equal(t, 1, acks)
				require.Zero(t, nacks)
				dlq.requireEmpty()
			})
		})
	}
}

func TestRetry_timeoutMiddlewareMessageGoesToTier1(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, envConfig{
			middleware: []message.HandlerMiddleware{wmiddleware.Timeout(time.Second)},
			policy:     tiered.Policy{Delays: []time.Duration{10 * time.Second}},
		})
		h := e.handle("billing", "orders", func(n int, msg *message.Message) error {
			if n > 1 {
				return nil
			}
			<-msg.Context().Done()
			return msg.Context().Err()
		})
		tiers, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		got := tiers[0].next()
		e.settle()

		require.Equal(t, "context deadline exceeded", got.Metadata.Get(tiered.KeyLastError))
		require.Equal(t, []call{
			{topic: "orders", at: 0},
			{topic: "orders.billing.retry.10s", at: 11 * time.Second, attempt: "1", tier: "1"},
		}, e.recorded(), "failed after the 1s timeout, due 10s later")
		dlq.requireEmpty()
	})
}

func TestRetry_quickAttempts(t *testing.T) {
	const tier = "orders.billing.retry.10s"
	ms100 := 100 * time.Millisecond
	constant := func() backoff.BackOff { return backoff.NewConstantBackOff(ms100) }
	tests := []struct {
		name      string
		quick     tiered.Quick
		err       func(n int) error
		wantCalls []call
		wantTier  bool
		wantDLQ   bool
	}{
		{
			name:  "quick attempts run before the first tier, in process",
			quick: tiered.Quick{Attempts: 2, BackOff: constant},
			err:   func(int) error { return errBoom },
			wantCalls: []call{
				{topic: "orders", at: 0},
				{topic: "orders", at: ms100},
				{topic: "orders", at: 2 * ms100},
				{topic: tier, at: 2*ms100 + 10*time.Second, attempt: "1", tier: "1"},
			},
			wantTier: true,
			wantDLQ:  true,
		},
		{
			name:  "success during quick attempts touches no tier",
			quick: tiered.Quick{Attempts: 2, BackOff: constant},
			err: func(n int) error {
				if n < 3 {
					return errBoom
				}
				return nil
			},
			wantCalls: []call{{topic: "orders", at: 0}, {topic: "orders", at: ms100}, {topic: "orders", at: 2 * ms100}},
		},
		{
			name:      "permanent error skips quick attempts",
			quick:     tiered.Quick{Attempts: 2, BackOff: constant},
			err:       func(int) error { return tiered.Permanent(errBoom) },
			wantCalls: []call{{topic: "orders", at: 0}},
			wantDLQ:   true,
		},
		{
			name:  "a back-off that stops ends quick attempts",
			quick: tiered.Quick{Attempts: 5, BackOff: func() backoff.BackOff { return backoff.WithMaxRetries(backoff.NewConstantBackOff(ms100), 1) }},
			err:   func(int) error { return errBoom },
			wantCalls: []call{
				{topic: "orders", at: 0},
				{topic: "orders", at: ms100},
				{topic: tier, at: ms100 + 10*time.Second, attempt: "1", tier: "1"},
			},
			wantTier: true,
			wantDLQ:  true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}, Quick: tt.quick}})
				h := e.handle("billing", "orders", func(n int, _ *message.Message) error { return tt.err(n) })
				tiers, dlq := e.collectAll(h.Topics)
				e.run()

				e.publish("orders", message.NewMessage("m1", nil))
				e.settle()

				require.Equal(t, tt.wantCalls, e.recorded())
				if tt.wantTier {
					tiers[0].next()
				}
				tiers[0].requireEmpty()
				if tt.wantDLQ {
					dlq.next()
				}
				dlq.requireEmpty()
			})
		})
	}
}

// Watermill's Timeout middleware added after the handler runs inside the
// retry middleware and cancels the message's context when each attempt
// ends: every quick attempt still runs, each with a fresh timeout.
func TestRetry_quickAttemptsWithTimeoutInsideTheRetryMiddleware(t *testing.T) {
	const timeout = time.Second
	ms100 := 100 * time.Millisecond
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, envConfig{policy: tiered.Policy{
			MaxAttempts: 1,
			Quick:       tiered.Quick{Attempts: 2, BackOff: func() backoff.BackOff { return backoff.NewConstantBackOff(ms100) }},
		}})
		var mu sync.Mutex
		var deadlines []time.Duration
		h := e.handle("billing", "orders", func(_ int, msg *message.Message) error {
			deadline, _ := msg.Context().Deadline()
			mu.Lock()
			deadlines = append(deadlines, time.Until(deadline))
			mu.Unlock()
			<-msg.Context().Done()
			return msg.Context().Err()
		})
		e.router.AddMiddleware(wmiddleware.Timeout(timeout)) // added after the handler: runs inside the retry middleware
		_, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		got := dlq.next()
		e.settle()

		require.Equal(t, []call{
			{topic: "orders", at: 0},
			{topic: "orders", at: timeout + ms100},
			{topic: "orders", at: 2 * (timeout + ms100)},
		}, e.recorded())
		mu.Lock()
		defer mu.Unlock()
		require.Equal(t, []time.Duration{timeout, timeout, timeout}, deadlines, "each attempt gets its own timeout")
		require.Equal(t, "attempt 1 of 1 failed, no attempts left: context deadline exceeded", got.Metadata.Get(tiered.KeyLastError))
	})
}

func TestRetry_quickAttemptsWithDefaultBackOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}, Quick: tiered.Quick{Attempts: 3}}})
		h := e.handle("billing", "orders", fail)
		_, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		dlq.next()
		e.settle()

		calls := e.recorded()
		require.Len(t, calls, 5, "1 try + 3 quick attempts on the main topic, then tier 1")
		for i, c := range calls[:4] {
			require.Equal(t, "orders", c.topic)
			if i > 0 {
				wait := c.at - calls[i-1].at
				require.Greater(t, wait, time.Duration(0), "quick attempt %d waits", i)
				require.LessOrEqual(t, wait, 750*time.Millisecond, "quick attempt %d waits a blip, not a tier", i)
			}
		}
		require.Equal(t, "orders.billing.retry.10s", calls[4].topic, "no quick attempts on a tier")
	})
}

// Two handlers on one topic: a failure of one never reaches the other.
func TestRetry_perHandlerIsolation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}}})
		billing := e.handle("billing", "orders", fail)
		var mu sync.Mutex
		var shippingCalls []string
		shipping, err := e.retrier.AddConsumerHandler(e.router, "shipping", "orders", func(msg *message.Message) error {
			mu.Lock()
			defer mu.Unlock()
			shippingCalls = append(shippingCalls, message.SubscribeTopicFromCtx(msg.Context()))
			return nil
		})
		require.NoError(t, err)
		_, billingDLQ := e.collectAll(billing.Topics)
		shippingTiers, shippingDLQ := e.collectAll(shipping.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		billingDLQ.next()
		e.settle()

		mu.Lock()
		require.Equal(t, []string{"orders"}, shippingCalls)
		mu.Unlock()
		shippingTiers[0].requireEmpty()
		shippingDLQ.requireEmpty()
		require.Len(t, e.recorded(), 2, "billing: main and tier 1")
	})
}

// A message acked before its handler ends (Watermill's InstantAck) has its
// context ended by the subscriber at the Ack; its failure must still reach
// the tier, then the dead-letter topic, not vanish as an "interrupted"
// attempt.
func TestRetry_earlyAckStillSendsTheCopy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, envConfig{
			policy:     tiered.Policy{Delays: []time.Duration{10 * time.Second}},
			middleware: []message.HandlerMiddleware{wmiddleware.InstantAck},
		})
		h := e.handle("billing", "orders", func(_ int, msg *message.Message) error {
			<-msg.Context().Done() // the subscriber ends the context at the early Ack
			return errBoom
		})
		tiers, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", []byte("payload")))
		got := dlq.next()
		e.settle()

		require.Equal(t, "m1", tiers[0].next().UUID, "the failure went to the tier")
		require.Equal(t, "m1", got.UUID, "and, failing again, to the dead-letter topic")
		require.Equal(t, "2", got.Metadata.Get(tiered.KeyAttempt))
		require.Len(t, e.recorded(), 2)
	})
}

// An outer middleware that gives each message a fresh context must not make
// tier deliveries look like first deliveries: the handler is bound to the
// hop it consumes when it is wired, so attempts count up and the message is
// dead-lettered after MaxAttempts instead of circling through tier 1.
func TestRetry_freshContextFromAnOuterMiddlewareKeepsTheAttemptCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		freshContext := func(h message.HandlerFunc) message.HandlerFunc {
			return func(msg *message.Message) ([]*message.Message, error) {
				msg.SetContext(context.Background())
				return h(msg)
			}
		}
		e := newEnv(t, envConfig{
			policy:     tiered.Policy{Delays: []time.Duration{10 * time.Second}, MaxAttempts: 3},
			middleware: []message.HandlerMiddleware{freshContext},
		})
		h := e.handle("billing", "orders", fail)
		_, dlq := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		got := dlq.next()
		e.settle()

		require.Equal(t, "3", got.Metadata.Get(tiered.KeyAttempt))
		require.Equal(t, []string{"", "1", "2"}, attemptsOf(e.recorded()), "main, then tier 1 twice (the last tier repeats)")
		dlq.requireEmpty()
	})
}

func attemptsOf(calls []call) []string {
	out := make([]string, len(calls))
	for i, c := range calls {
		out[i] = c.attempt
	}
	return out
}

// A retry_attempt near the largest int cannot wrap around into an early
// tier: the message is past every MaxAttempts and goes to the dead-letter
// topic.
func TestRetry_attemptNearMaxIntGoesToDLQ(t *testing.T) {
	for _, attempt := range []int{math.MaxInt, math.MaxInt - 1} {
		t.Run(strconv.Itoa(attempt), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}, MaxAttempts: 5}})
				h := e.handle("billing", "orders", fail)
				tiers, dlq := e.collectAll(h.Topics)
				e.run()

				msg := message.NewMessage("m1", nil)
				tiered.Info{Attempt: attempt, Tier: 1, OriginalTopic: "orders", Handler: "billing", FirstFailure: e.start, LastFailure: e.start}.Write(msg.Metadata)
				e.publish(h.Topics.Tiers[0], msg)
				got := dlq.next()
				e.settle()

				require.Equal(t, strconv.Itoa(math.MaxInt), got.Metadata.Get(tiered.KeyAttempt))
				require.Contains(t, got.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "no attempts left")
				tiers[0].next() // the message the test published
				tiers[0].requireEmpty()
			})
		})
	}
}

// A panic keeps where it happened: the error (in the log, the classifier
// and the metadata) is Watermill's RecoveredPanicError with the stack from
// the panicking frame, bounded.
func TestRetry_panicKeepsItsStack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var classified []error
		e := newEnv(t, envConfig{policy: tiered.Policy{
			Delays: []time.Duration{10 * time.Second},
			Classify: func(p tiered.ClassifyParams) tiered.Decision {
				classified = append(classified, p.Err)
				return tiered.Retry
			},
		}})
		h := e.handle("billing", "orders", func(int, *message.Message) error { return chargeCard() })
		tiers, _ := e.collectAll(h.Topics)
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		got := tiers[0].next()
		e.settle()

		lastErr := got.Metadata.Get(tiered.KeyLastError)
		require.Contains(t, lastErr, "card gateway exploded")
		require.Contains(t, lastErr, "router_test.chargeCard", "the stack starts at the frame that panicked")
		require.LessOrEqual(t, len(lastErr), tiered.MaxErrorBytes)
		require.NotEmpty(t, classified)
		var panicked wmiddleware.RecoveredPanicError
		require.ErrorAs(t, classified[0], &panicked, "Watermill's own panic error, as Recoverer makes it")
		require.Equal(t, "card gateway exploded", panicked.V)
		require.Contains(t, panicked.Stacktrace, "router_test.chargeCard")
		require.LessOrEqual(t, len(panicked.Stacktrace), 4096)
	})
}

//go:noinline
func chargeCard() error { panic("card gateway exploded") }
