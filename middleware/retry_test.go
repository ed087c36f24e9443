package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/middleware"
	"github.com/retry-kafka/retry-kafka/tiered"
)

var errBoom = errors.New("boom")

func TestNewRetry_rejectsInvalidConfig(t *testing.T) {
	pub := &brokerPublisher{}
	oneTier := tiered.Policy{Delays: []time.Duration{time.Second}}
	valid := func() middleware.Config {
		return middleware.Config{Publisher: pub, Policy: oneTier, Topic: "orders", Handler: "billing"}
	}
	ignoresDelay := func(p tiered.TopicParams) string {
		if p.DLQ {
			return p.Topic + "." + p.Handler + ".dlq"
		}
		return p.Topic + "." + p.Handler + ".retry"
	}
	tests := []struct {
		name     string
		change   func(c *middleware.Config)
		wantIs   error // sentinel the error must wrap, if any
		wantText []string
	}{
		{"nil Publisher", func(c *middleware.Config) { c.Publisher = nil }, nil, []string{"Publisher is nil"}},
		{"empty Topic", func(c *middleware.Config) { c.Topic = "" }, nil, []string{"Topic is empty"}},
		{"empty Handler", func(c *middleware.Config) { c.Handler = "" }, nil, []string{"Handler is empty"}},
		{"bad character in Topic", func(c *middleware.Config) { c.Topic = "orders!" }, tiered.ErrInvalidTopicName, []string{`"orders!" has '!'`}},
		{"bad character in Handler", func(c *middleware.Config) { c.Handler = "bill/ing" }, tiered.ErrInvalidTopicName, []string{`has '/'`}},
		{"Topic over 249 bytes", func(c *middleware.Config) { c.Topic = strings.Repeat("t", 250) }, tiered.ErrInvalidTopicName, []string{"topic:", "250 bytes, the limit is 249"}},
		{"tier name over 249 bytes", func(c *middleware.Config) { c.Topic = strings.Repeat("t", 240) }, tiered.ErrInvalidTopicName, []string{"tier 1 (1s)", "the limit is 249"}},
		{
			"TopicName that ignores the delay",
			func(c *middleware.Config) {
				c.Policy = tiered.Policy{Delays: []time.Duration{time.Second, time.Minute}}
				c.TopicName = ignoresDelay
			},
			tiered.ErrInvalidTopicName, []string{`both named "orders.billing.retry"`},
		},
		{
			"two delays that name one topic",
			func(c *middleware.Config) {
				c.Policy = tiered.Policy{Delays: []time.Duration{time.Second, 1000 * time.Millisecond}}
			},
			tiered.ErrInvalidPolicy, []string{`Delays[0] and Delays[1] are both 1s`},
		},
		{"MaxAttempts > 1 with no Delays", func(c *middleware.Config) { c.Policy = tiered.Policy{MaxAttempts: 3} }, tiered.ErrInvalidPolicy, []string{"Delays is empty"}},
		{"negative delay", func(c *middleware.Config) { c.Policy = tiered.Policy{Delays: []time.Duration{-time.Second}} }, tiered.ErrInvalidPolicy, []string{"Delays[0] is -1s"}},
		{"negative Quick.Attempts", func(c *middleware.Config) { c.Policy.Quick.Attempts = -1 }, tiered.ErrInvalidPolicy, []string{"Quick.Attempts is -1"}},
		{
			"every problem is reported",
			func(c *middleware.Config) { c.Publisher, c.Topic, c.Handler = nil, "", "" },
			nil, []string{"Publisher is nil", "Topic is empty", "Handler is empty"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			config := valid()
			tt.change(&config)

			var retry *middleware.Retry
			var err error
			require.NotPanics(t, func() { retry, err = middleware.NewRetry(config, nil) })

			require.Nil(t, retry)
			require.ErrorContains(t, err, "invalid config: ")
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			for _, want := range tt.wantText {
				require.ErrorContains(t, err, want)
			}
			require.Equal(t, err.Error(), "invalid config: "+config.Validate().Error(), "Validate reports the same problems")
		})
	}
}

func TestNewRetry_topics(t *testing.T) {
	retry, err := middleware.NewRetry(middleware.Config{
		Publisher: &brokerPublisher{},
		Policy:    tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute}, MaxAttempts: 5},
		Topic:     "orders",
		Handler:   "billing",
	}, nil)
	require.NoError(t, err)

	require.Equal(t, tiered.Topics{
		Main:    "orders",
		Handler: "billing",
		Tiers:   []string{"orders.billing.retry.10s", "orders.billing.retry.1m"},
		Delays:  []time.Duration{10 * time.Second, time.Minute},
		DLQ:     "orders.billing.dlq",
	}, retry.Topics())
}

// A publish to a tier or the dead-letter topic that fails for a while is
// tried again, as a publish: the handler runs once, the original is acked
// once the copy is out, and nothing is Nacked or lost.
func TestRetry_publishFailureRetriesThePublish(t *testing.T) {
	const failures = 3
	tests := []struct {
		name      string
		policy    tiered.Policy
		handler   error
		wantTopic string
	}{
		{"to the first tier", tiered.Policy{Delays: []time.Duration{time.Minute}}, errBoom, "orders.billing.retry.1m"},
		{"to the dead-letter topic, no attempts left", tiered.Policy{MaxAttempts: 1}, errBoom, "orders.billing.dlq"},
		{"to the dead-letter topic, permanent error", tiered.Policy{Delays: []time.Duration{time.Minute}}, tiered.Permanent(errBoom), "orders.billing.dlq"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rg := newRig(t, rigConfig{
				policy:   tt.policy,
				failures: map[string]int{tt.wantTopic: failures},
				handler:  func(*message.Message) error { return tt.handler },
			})

			rg.publish(t, message.NewMessage("m1", []byte("payload")))

			require.Eventually(t, func() bool { return len(rg.pub.on(tt.wantTopic)) == 1 && rg.settled("orders") }, waitFor, tick)
			calls, acks, nacks, errs := rg.snapshot()
			require.Zero(t, nacks["orders"], "a failed publish is retried, not Nacked")
			require.Equal(t, 1, acks["orders"], "the original is acked once its copy is published")
			require.Len(t, calls, 1, "the handler does not run again because a publish failed")
			require.Empty(t, errs)
			require.Equal(t, failures, rg.pub.failed(tt.wantTopic))
			require.Len(t, rg.pub.all(), 1, "exactly one copy published, to %s", tt.wantTopic)
			got := rg.pub.on(tt.wantTopic)[0].msg
			require.Equal(t, "m1", got.UUID)
			require.Equal(t, "payload", string(got.Payload))
		})
	}
}

func TestRetry_publishesACopyWithSameUUIDPayloadAndMetadata(t *testing.T) {
	rg := newRig(t, rigConfig{
		policy:  tiered.Policy{Delays: []time.Duration{time.Minute}},
		handler: func(*message.Message) error { return errBoom },
	})
	msg := message.NewMessage("m1", []byte(`{"order":42}`))
	msg.Metadata.Set("tenant", "acme")

	rg.publish(t, msg)

	require.Eventually(t, func() bool { return len(rg.pub.on("orders.billing.retry.1m")) == 1 && rg.settled("orders") }, waitFor, tick)
	got := rg.pub.on("orders.billing.retry.1m")[0].msg
	rg.mu.Lock()
	consumed := rg.delivered["orders"][0]
	rg.mu.Unlock()
	require.NotSame(t, consumed, got, "the consumed message is never republished itself")
	require.Equal(t, "m1", got.UUID)
	require.Equal(t, `{"order":42}`, string(got.Payload))
	require.Equal(t, "acme", got.Metadata.Get("tenant"))
	require.Equal(t, "1", got.Metadata.Get(tiered.KeyAttempt))
	require.Equal(t, "1", got.Metadata.Get(tiered.KeyTier))
	require.Equal(t, "boom", got.Metadata.Get(tiered.KeyLastError))
	require.NotEmpty(t, got.Metadata.Get(tiered.KeyDueAt))
	require.Empty(t, consumed.Metadata.Get(tiered.KeyAttempt), "the consumed message's metadata is not changed")
}

func TestRetry_panickingHandlerGoesToTier(t *testing.T) {
	tests := []struct {
		name          string
		before, after []message.HandlerMiddleware
	}{
		{name: "without Recoverer"},
		{name: "Recoverer added before the retry middleware", before: []message.HandlerMiddleware{wmiddleware.Recoverer}},
		{name: "Recoverer added after the retry middleware", after: []message.HandlerMiddleware{wmiddleware.Recoverer}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rg := newRig(t, rigConfig{
				policy:  tiered.Policy{Delays: []time.Duration{time.Minute}},
				before:  tt.before,
				after:   tt.after,
				handler: func(*message.Message) error { panic("kaboom") },
			})

			rg.publish(t, message.NewMessage("m1", nil))

			require.Eventually(t, func() bool { return len(rg.pub.on("orders.billing.retry.1m")) == 1 && rg.settled("orders") }, waitFor, tick)
			calls, acks, nacks, _ := rg.snapshot()
			require.Equal(t, []string{"orders"}, calls, "a panic is a failure like any other: no redelivery")
			require.Equal(t, 1, acks["orders"])
			require.Zero(t, nacks["orders"])
			got := rg.pub.on("orders.billing.retry.1m")[0].msg
			require.Equal(t, "1", got.Metadata.Get(tiered.KeyAttempt))
			require.Contains(t, got.Metadata.Get(tiered.KeyLastError), "kaboom")
			require.LessOrEqual(t, len(got.Metadata.Get(tiered.KeyLastError)), tiered.MaxErrorBytes, "a stack trace is cut too")
		})
	}
}

// Watermill's Timeout middleware cancels the message context; the copy sent
// to the tier must have a live context (a cancelled one is fatal to some
// publishers) that keeps the original's values.
func TestRetry_timeoutCopyHasLiveContext(t *testing.T) {
	const timeout = 20 * time.Millisecond
	tests := []struct {
		name          string
		before, after []message.HandlerMiddleware
	}{
		{name: "Timeout added before the retry middleware", before: []message.HandlerMiddleware{wmiddleware.Timeout(timeout)}},
		{name: "Timeout added after the retry middleware", after: []message.HandlerMiddleware{wmiddleware.Timeout(timeout)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			handlerErr := make(chan error, 10)
			rg := newRig(t, rigConfig{
				policy: tiered.Policy{Delays: []time.Duration{time.Minute}},
				before: tt.before,
				after:  tt.after,
				handler: func(msg *message.Message) error {
					<-msg.Context().Done()
					handlerErr <- msg.Context().Err()
					return msg.Context().Err()
				},
			})

			rg.publish(t, message.NewMessage("m1", nil))

			require.Eventually(t, func() bool { return len(rg.pub.on("orders.billing.retry.1m")) == 1 && rg.settled("orders") }, waitFor, tick)
			require.ErrorIs(t, <-handlerErr, context.DeadlineExceeded, "the handler timed out")
			got := rg.pub.on("orders.billing.retry.1m")[0]
			require.NoError(t, got.ctxErr, "the copy's context is live when published")
			require.False(t, got.hasDeadline, "the copy does not inherit the deadline")
			require.Equal(t, "orders", got.subscribeTopic, "the copy keeps the original context's values")
			require.Contains(t, got.msg.Metadata.Get(tiered.KeyLastError), "context deadline exceeded")
			_, acks, nacks, _ := rg.snapshot()
			require.Equal(t, 1, acks["orders"])
			require.Zero(t, nacks["orders"])
		})
	}
}

func TestRetry_correlationIDPreserved(t *testing.T) {
	tests := []struct {
		name      string
		policy    tiered.Policy
		wantTopic string
	}{
		{"on the tier copy", tiered.Policy{Delays: []time.Duration{time.Minute}}, "orders.billing.retry.1m"},
		{"on the dead-letter copy", tiered.Policy{MaxAttempts: 1}, "orders.billing.dlq"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rg := newRig(t, rigConfig{
				policy:  tt.policy,
				before:  []message.HandlerMiddleware{wmiddleware.CorrelationID},
				handler: func(*message.Message) error { return errBoom },
			})
			msg := message.NewMessage("m1", nil)
			wmiddleware.SetCorrelationID("corr-42", msg)

			rg.publish(t, msg)

			require.Eventually(t, func() bool { return len(rg.pub.on(tt.wantTopic)) == 1 }, waitFor, tick)
			require.Equal(t, "corr-42", wmiddleware.MessageCorrelationID(rg.pub.on(tt.wantTopic)[0].msg))
		})
	}
}

func TestRetry_successPublishesNothing(t *testing.T) {
	rg := newRig(t, rigConfig{
		policy:  tiered.Policy{Delays: []time.Duration{time.Minute}},
		handler: func(*message.Message) error { return nil },
	})

	rg.publish(t, message.NewMessage("m1", nil))

	require.Eventually(t, func() bool { return rg.settled("orders") }, waitFor, tick)
	calls, acks, nacks, _ := rg.snapshot()
	require.Equal(t, []string{"orders"}, calls)
	require.Equal(t, 1, acks["orders"])
	require.Zero(t, nacks["orders"])
	require.Empty(t, rg.pub.all())
}

// With the tier topics consumed too (without the hold), a message that
// always fails walks every hop; the error text is replaced at each hop.
func TestRetry_errorTextReplacedAtEachHop(t *testing.T) {
	rg := newRig(t, rigConfig{
		policy: tiered.Policy{Delays: []time.Duration{time.Minute, time.Hour}},
		tiers:  true,
		handler: func(msg *message.Message) error {
			return fmt.Errorf("failure on %s", message.SubscribeTopicFromCtx(msg.Context()))
		},
	})

	rg.publish(t, message.NewMessage("m1", nil))

	require.Eventually(t, func() bool { return len(rg.pub.on("orders.billing.dlq")) == 1 }, waitFor, tick)
	all := rg.pub.all()
	require.Len(t, all, 3)
	require.Equal(t, "failure on orders", all[0].msg.Metadata.Get(tiered.KeyLastError))
	require.Equal(t, "failure on orders.billing.retry.1m", all[1].msg.Metadata.Get(tiered.KeyLastError))
	dlq := all[2].msg.Metadata
	require.Equal(t, "attempt 3 of 3 failed, no attempts left: failure on orders.billing.retry.1h", dlq.Get(tiered.KeyLastError))
	require.Equal(t, dlq.Get(tiered.KeyLastError), dlq.Get(wmiddleware.ReasonForPoisonedKey))
	require.Equal(t, "orders.billing.retry.1h", dlq.Get(wmiddleware.PoisonedTopicKey))
	require.Equal(t, "billing", dlq.Get(wmiddleware.PoisonedHandlerKey))
	require.NotEmpty(t, dlq.Get(wmiddleware.PoisonedSubscriberKey))
}

// When the subscriber gives a message up while the handler runs (a
// rebalance, a closing subscription), the attempt was interrupted, not
// failed: the message is Nacked and tried again, and no tier sees it.
func TestRetry_interruptedAttemptIsNackedNotCounted(t *testing.T) {
	var mu sync.Mutex
	var cancels []context.CancelFunc
	rg := newRig(t, rigConfig{
		policy: tiered.Policy{Delays: []time.Duration{time.Minute}},
		transform: func(m *message.Message) {
			ctx, cancel := context.WithCancel(m.Context())
			m.SetContext(ctx)
			mu.Lock()
			cancels = append(cancels, cancel)
			mu.Unlock()
		},
		handler: func(msg *message.Message) error {
			mu.Lock()
			n := len(cancels)
			cancel := cancels[n-1]
			mu.Unlock()
			if n == 1 {
				cancel() // the subscriber ends the message's context mid-handling
				<-msg.Context().Done()
				return msg.Context().Err()
			}
			return nil
		},
	})
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, cancel := range cancels {
			cancel()
		}
	})

	rg.publish(t, message.NewMessage("m1", nil))

	require.Eventually(t, func() bool { return rg.settled("orders") }, waitFor, tick)
	calls, acks, nacks, errs := rg.snapshot()
	require.Equal(t, []string{"orders", "orders"}, calls, "tried again from the same topic")
	require.Equal(t, 1, nacks["orders"])
	require.Equal(t, 1, acks["orders"])
	require.Empty(t, rg.pub.all(), "an interrupted attempt sends nothing to a tier")
	require.Len(t, errs, 1)
	require.ErrorIs(t, errs[0], context.Canceled)
}
