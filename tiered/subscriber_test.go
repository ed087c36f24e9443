package tiered_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/instrument/instrumenttest"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Tests in this file run in a synctest bubble: time.Now() is the bubble's
// clock, time.Sleep moves it forward once every goroutine is blocked, and
// a receive guarded by time.After(forever) fails at once instead of hanging
// when nothing will ever arrive.
const forever = 1000 * time.Hour

func receive(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case msg, ok := <-ch:
		require.True(t, ok, "channel closed before a message arrived")
		return msg
	case <-time.After(forever):
		t.Fatal("no message arrived")
		return nil
	}
}

func requireNothingYet(t *testing.T, ch <-chan *message.Message) {
	t.Helper()
	synctest.Wait()
	select {
	case msg := <-ch:
		t.Fatalf("message %s handed on early, at %v", msg.UUID, time.Now())
	default:
	}
}

func requireNacked(t *testing.T, msg *message.Message) {
	t.Helper()
	select {
	case <-msg.Nacked():
	case <-msg.Acked():
		t.Fatal("message acked, want nacked")
	case <-time.After(forever):
		t.Fatal("message neither acked nor nacked")
	}
}

func TestSubscriber_neverHandsOnEarly(t *testing.T) {
	const maxDelay = time.Minute
	tests := []struct {
		name          string
		receivedAfter time.Duration // when the message reaches the subscriber, from the start
		metadata      func(start time.Time) message.Metadata
		wantAfter     time.Duration // when it must be handed on, from the start
	}{
		{
			name: "due in 30s is handed on at 30s",
			metadata: func(s time.Time) message.Metadata {
				return message.Metadata{tiered.KeyDueAt: ms(s.Add(30 * time.Second))}
			},
			wantAfter: 30 * time.Second,
		},
		{
			name:          "due 1ms inside receipt + MaxDelay is not clamped",
			receivedAfter: 2 * time.Second,
			metadata: func(s time.Time) message.Metadata {
				return message.Metadata{tiered.KeyDueAt: ms(s.Add(62*time.Second - time.Millisecond))}
			},
			wantAfter: 62*time.Second - time.Millisecond,
		},
		{
			name: "Watermill's delayed-until key is honoured",
			metadata: func(s time.Time) message.Metadata {
				return message.Metadata{delay.DelayedUntilKey: s.Add(20 * time.Second).UTC().Format(time.RFC3339)}
			},
			wantAfter: 20 * time.Second,
		},
		{
			name:          "forged far-future due time is clamped to receipt + MaxDelay",
			receivedAfter: 5 * time.Second,
			metadata: func(s time.Time) message.Metadata {
				return message.Metadata{tiered.KeyDueAt: ms(s.Add(24 * 365 * time.Hour))}
			},
			wantAfter: 5*time.Second + maxDelay,
		},
		{
			name:          "due in the past passes at once",
			receivedAfter: 5 * time.Second,
			metadata:      func(s time.Time) message.Metadata { return message.Metadata{tiered.KeyDueAt: ms(s.Add(-time.Hour))} },
			wantAfter:     5 * time.Second,
		},
		{
			name:          "no due time passes at once",
			receivedAfter: 5 * time.Second,
			metadata:      func(time.Time) message.Metadata { return message.Metadata{"tenant": "acme"} },
			wantAfter:     5 * time.Second,
		},
		{
			name:          "malformed due time passes at once",
			receivedAfter: 5 * time.Second,
			metadata:      func(time.Time) message.Metadata { return message.Metadata{tiered.KeyDueAt: "soon"} },
			wantAfter:     5 * time.Second,
		},
		{
			name:          "malformed delayed-until passes at once",
			receivedAfter: 5 * time.Second,
			metadata:      func(time.Time) message.Metadata { return message.Metadata{delay.DelayedUntilKey: "tomorrow"} },
			wantAfter:     5 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
				sub, err := tiered.NewSubscriber(gc, tiered.SubscriberConfig{MaxDelay: maxDelay}, nil)
				require.NoError(t, err)
				defer func() { require.NoError(t, sub.Close()) }()
				ch, err := sub.Subscribe(context.Background(), "orders.billing.retry.1m")
				require.NoError(t, err)

				time.Sleep(tt.receivedAfter)
				msg := message.NewMessage("m1", []byte("payload"))
				msg.Metadata = tt.metadata(start)
				due, hasDue, _ := tiered.DueAt(msg.Metadata)
				require.NoError(t, gc.Publish("orders.billing.retry.1m", msg))

				if tt.wantAfter > tt.receivedAfter {
					time.Sleep(tt.wantAfter - tt.receivedAfter - time.Millisecond)
					requireNothingYet(t, ch)
				}
				got := receive(t, ch)
				defer got.Ack()

				require.Equal(t, tt.wantAfter, time.Since(start), "handed on at the wrong time")
				if hasDue && tt.wantAfter < tt.receivedAfter+maxDelay {
					require.False(t, time.Now().Before(due), "handed on before its due time %v", due)
				}
				require.Equal(t, "m1", got.UUID)
				require.Equal(t, "payload", string(got.Payload))
			})
		})
	}
}

func TestSubscriber_holdsTheHeadThenPassesWhatIsDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10}, nil)
		sub, err := tiered.NewSubscriber(gc, tiered.SubscriberConfig{MaxDelay: 10 * time.Second}, nil)
		require.NoError(t, err)
		defer func() { require.NoError(t, sub.Close()) }()
		ch, err := sub.Subscribe(context.Background(), "tier")
		require.NoError(t, err)

		// Two messages of one tier, published 3s apart: each waits the
		// tier's 10s from its own publish.
		first := message.NewMessage("first", nil)
		first.Metadata.Set(tiered.KeyDueAt, ms(start.Add(10*time.Second)))
		require.NoError(t, gc.Publish("tier", first))
		time.Sleep(3 * time.Second)
		second := message.NewMessage("second", nil)
		second.Metadata.Set(tiered.KeyDueAt, ms(start.Add(13*time.Second)))
		require.NoError(t, gc.Publish("tier", second))

		got := receive(t, ch)
		require.Equal(t, "first", got.UUID)
		require.Equal(t, 10*time.Second, time.Since(start))
		got.Ack()

		got = receive(t, ch)
		require.Equal(t, "second", got.UUID)
		require.Equal(t, 13*time.Second, time.Since(start))
		got.Ack()
	})
}

// feedSubscriber is a minimal subscriber that hands on the messages the
// test feeds it, so the test holds the very *message.Message the holding
// subscriber sees (and can cancel its context or watch its Nack).
type feedSubscriber struct {
	feed    chan *message.Message
	closing chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

func newFeedSubscriber() *feedSubscriber {
	return &feedSubscriber{feed: make(chan *message.Message), closing: make(chan struct{})}
}

func (f *feedSubscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	out := make(chan *message.Message)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(out)
		for {
			select {
			case msg := <-f.feed:
				select {
				case out <- msg:
				case <-ctx.Done():
					return
				case <-f.closing:
					return
				}
			case <-ctx.Done():
				return
			case <-f.closing:
				return
			}
		}
	}()
	return out, nil
}

func (f *feedSubscriber) Close() error {
	f.once.Do(func() { close(f.closing) })
	f.wg.Wait()
	return nil
}

func TestSubscriber_stopsWaitingAtOnceAndNacks(t *testing.T) {
	tests := []struct {
		name string
		// stop ends the wait; it gets the message's and the
		// subscription's cancel functions and the subscriber.
		stop func(cancelMsg, cancelSub context.CancelFunc, sub *tiered.Subscriber)
		// outClosed says whether the subscription's channel ends too.
		outClosed bool
	}{
		{
			name:      "message context cancelled",
			stop:      func(cancelMsg, _ context.CancelFunc, _ *tiered.Subscriber) { cancelMsg() },
			outClosed: false,
		},
		{
			name:      "subscription context cancelled",
			stop:      func(_, cancelSub context.CancelFunc, _ *tiered.Subscriber) { cancelSub() },
			outClosed: true,
		},
		{
			name:      "subscriber closed",
			stop:      func(_, _ context.CancelFunc, sub *tiered.Subscriber) { _ = sub.Close() },
			outClosed: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				feed := newFeedSubscriber()
				sub, err := tiered.NewSubscriber(feed, tiered.SubscriberConfig{MaxDelay: time.Minute}, nil)
				require.NoError(t, err)
				defer func() { require.NoError(t, sub.Close()) }()
				subCtx, cancelSub := context.WithCancel(context.Background())
				defer cancelSub()
				out, err := sub.Subscribe(subCtx, "tier")
				require.NoError(t, err)

				msgCtx, cancelMsg := context.WithCancel(context.Background())
				defer cancelMsg()
				msg := message.NewMessage("m1", nil)
				msg.SetContext(msgCtx)
				msg.Metadata.Set(tiered.KeyDueAt, ms(start.Add(30*time.Second)))
				feed.feed <- msg

				time.Sleep(10 * time.Second)
				requireNothingYet(t, out)
				tt.stop(cancelMsg, cancelSub, sub)

				requireNacked(t, msg)
				require.Equal(t, 10*time.Second, time.Since(start), "the wait did not end at once")

				time.Sleep(time.Hour)
				synctest.Wait()
				select {
				case got, open := <-out:
					require.False(t, open, "message %v handed on after its wait was cut short", got)
					require.True(t, tt.outClosed, "subscription channel closed")
				default:
					require.False(t, tt.outClosed, "subscription channel still open")
				}
			})
		})
	}
}

func TestSubscriber_nacksWhenTheMessageEndsWhileWaitingForTheConsumer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		feed := newFeedSubscriber()
		sub, err := tiered.NewSubscriber(feed, tiered.SubscriberConfig{MaxDelay: time.Minute}, nil)
		require.NoError(t, err)
		defer func() { require.NoError(t, sub.Close()) }()
		out, err := sub.Subscribe(context.Background(), "tier")
		require.NoError(t, err)

		msgCtx, cancelMsg := context.WithCancel(context.Background())
		msg := message.NewMessage("due-now", nil)
		msg.SetContext(msgCtx)
		feed.feed <- msg // due at once, but nobody reads out

		synctest.Wait()
		cancelMsg()

		requireNacked(t, msg)
		requireNothingYet(t, out)
	})
}

func TestSubscriber_closeOverGoChannelNacksTheHeldMessage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		gc := gochannel.NewGoChannel(gochannel.Config{}, nil)
		// Keep the first delivery; the Nack on Close makes GoChannel
		// redeliver until its subscription ends, and those are dropped.
		delivered := make(chan *message.Message, 1)
		watched, err := message.MessageTransformSubscriberDecorator(func(m *message.Message) {
			select {
			case delivered <- m:
			default:
			}
		})(gc)
		require.NoError(t, err)
		var dec message.SubscriberDecorator = tiered.SubscriberDecorator(tiered.SubscriberConfig{MaxDelay: time.Minute}, nil)
		sub, err := dec(watched)
		require.NoError(t, err)
		out, err := sub.Subscribe(context.Background(), "tier")
		require.NoError(t, err)

		msg := message.NewMessage("m1", nil)
		msg.Metadata.Set(tiered.KeyDueAt, ms(start.Add(time.Minute)))
		require.NoError(t, gc.Publish("tier", msg))
		held := receive(t, delivered)

		time.Sleep(10 * time.Second)
		require.NoError(t, sub.Close())
		require.NoError(t, sub.Close(), "Close is idempotent")

		requireNacked(t, held)
		require.Equal(t, 10*time.Second, time.Since(start))
		_, open := <-out
		require.False(t, open)

		_, err = sub.Subscribe(context.Background(), "tier")
		require.ErrorContains(t, err, "closed", "no subscription after Close")
	})
}

func TestNewSubscriber_rejectsInvalidConfig(t *testing.T) {
	tests := []struct {
		name     string
		sub      message.Subscriber
		config   tiered.SubscriberConfig
		wantText string
	}{
		{"MaxDelay zero", newFeedSubscriber(), tiered.SubscriberConfig{}, "invalid config: MaxDelay is 0s, must be positive"},
		{"MaxDelay negative", newFeedSubscriber(), tiered.SubscriberConfig{MaxDelay: -time.Second}, "MaxDelay is -1s"},
		{"nil subscriber", nil, tiered.SubscriberConfig{MaxDelay: time.Second}, "invalid config: nil subscriber"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { _, err = tiered.NewSubscriber(tt.sub, tt.config, nil) })
			require.ErrorContains(t, err, tt.wantText)

			_, err = tiered.SubscriberDecorator(tt.config, nil)(tt.sub)
			require.ErrorContains(t, err, tt.wantText, "the decorator checks the same")
		})
	}
	require.ErrorContains(t, tiered.SubscriberConfig{}.Validate(), "MaxDelay")
	require.NoError(t, tiered.SubscriberConfig{MaxDelay: time.Nanosecond}.Validate())
}

// Forged far-future due times are clamped to the broker's append time plus
// the tier's delay, not to receipt: messages queued behind each other cannot
// stall a tier by more than one delay in all.
func TestSubscriber_clampCountsFromTheBrokersAppendTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const maxDelay = time.Second
		start := time.Now()
		feed := newFeedSubscriber()
		sub, err := tiered.NewSubscriber(feed, tiered.SubscriberConfig{MaxDelay: maxDelay}, nil)
		require.NoError(t, err)
		defer func() { require.NoError(t, sub.Close()) }()
		ch, err := sub.Subscribe(context.Background(), "tier")
		require.NoError(t, err)

		// Five forged messages, all stored by the broker at start, reach
		// the subscriber one after another (one partition): each is
		// handed on at start + delay at the latest, not a delay after the
		// one before.
		for i := range 5 {
			msg := message.NewMessage(fmt.Sprintf("forged-%d", i), nil)
			msg.Metadata.Set(tiered.KeyDueAt, ms(start.Add(24*time.Hour)))
			msg.SetContext(tiered.WithDelivery(context.Background(), &tiered.Delivery{AppendTime: start}))
			feed.feed <- msg
			got := receive(t, ch)
			require.Equal(t, msg.UUID, got.UUID)
			require.LessOrEqual(t, time.Since(start), maxDelay, "message %d held past append time + delay", i)
			got.Ack()
		}

		// Without an append time the clamp counts from receipt.
		time.Sleep(10 * time.Second)
		received := time.Now()
		msg := message.NewMessage("no-append-time", nil)
		msg.Metadata.Set(tiered.KeyDueAt, ms(start.Add(24*time.Hour)))
		feed.feed <- msg
		got := receive(t, ch)
		require.Equal(t, maxDelay, time.Since(received))
		got.Ack()
	})
}

// Subscribe and Close called concurrently, many times: no data race (run
// with -race), every subscription that started has its channel closed when
// Close returns, and a Subscribe that starts after Close returns ErrClosed.
func TestSubscriber_subscribeAndCloseConcurrently(t *testing.T) {
	for range 50 {
		feed := newFeedSubscriber()
		sub, err := tiered.NewSubscriber(feed, tiered.SubscriberConfig{MaxDelay: time.Second}, nil)
		require.NoError(t, err)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var chans []<-chan *message.Message
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ch, err := sub.Subscribe(context.Background(), "tier")
				if err != nil {
					require.ErrorIs(t, err, tiered.ErrClosed)
					return
				}
				mu.Lock()
				chans = append(chans, ch)
				mu.Unlock()
			}()
		}
		require.NoError(t, sub.Close())
		wg.Wait()
		// Every subscription that succeeded, before Close or racing it,
		// was ended by Close: one that started after Close returned
		// would still be open.
		mu.Lock()
		started := slices.Clone(chans)
		mu.Unlock()
		for _, ch := range started {
			select {
			case _, open := <-ch:
				require.False(t, open, "a subscription outlived Close")
			case <-time.After(5 * time.Second):
				t.Fatal("a subscription outlived Close: its channel is still open")
			}
		}
		_, err = sub.Subscribe(context.Background(), "tier")
		require.ErrorIs(t, err, tiered.ErrClosed)
	}
}

// With a Registerer, the gauges say how many messages are held now and
// for how long the one held longest has waited, per handler and tier;
// two subscribers of the same handler's tier add up.
func TestSubscriber_reportsHeldMessages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		reg := prometheus.NewRegistry()
		gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10}, nil)
		config := tiered.SubscriberConfig{MaxDelay: time.Minute, Registerer: reg, Handler: "billing", Tier: 1}
		var chans []<-chan *message.Message
		for _, topic := range []string{"tier-a", "tier-b"} {
			sub, err := tiered.NewSubscriber(gc, config, nil)
			require.NoError(t, err)
			defer func() { require.NoError(t, sub.Close()) }()
			ch, err := sub.Subscribe(context.Background(), topic)
			require.NoError(t, err)
			chans = append(chans, ch)
		}
		held := func() (float64, float64) {
			m := instrumenttest.Gather(t, reg)
			return m.Value("retry_kafka_held_messages", "handler_name", "billing", "tier", "1"),
				m.Value("retry_kafka_oldest_held_seconds", "handler_name", "billing", "tier", "1")
		}
		n, oldest := held()
		require.Equal(t, []float64{0, 0}, []float64{n, oldest}, "the series exist before the first hold")

		first := message.NewMessage("first", nil)
		first.Metadata.Set(tiered.KeyDueAt, ms(start.Add(30*time.Second)))
		require.NoError(t, gc.Publish("tier-a", first))
		time.Sleep(10 * time.Second)
		second := message.NewMessage("second", nil)
		second.Metadata.Set(tiered.KeyDueAt, ms(start.Add(50*time.Second)))
		require.NoError(t, gc.Publish("tier-b", second))
		time.Sleep(10 * time.Second)
		synctest.Wait()
		n, oldest = held()
		require.Equal(t, []float64{2, 20}, []float64{n, oldest}, "at 20s: both held, the first for 20s")

		receive(t, chans[0]).Ack()
		synctest.Wait()
		n, oldest = held()
		require.Equal(t, []float64{1, 20}, []float64{n, oldest}, "at 30s: the second held, for 20s")

		receive(t, chans[1]).Ack()
		synctest.Wait()
		n, oldest = held()
		require.Equal(t, []float64{0, 0}, []float64{n, oldest}, "at 50s: none held")
	})
}

func TestNewSubscriber_rejectsIncompleteMetricsConfig(t *testing.T) {
	reg := prometheus.NewRegistry()
	tests := []struct {
		name   string
		config tiered.SubscriberConfig
		want   string
	}{
		{"no handler", tiered.SubscriberConfig{MaxDelay: time.Second, Registerer: reg, Tier: 1}, "Handler is empty"},
		{"tier 0", tiered.SubscriberConfig{MaxDelay: time.Second, Registerer: reg, Handler: "billing"}, "Tier is 0"},
		{"handler not UTF-8", tiered.SubscriberConfig{MaxDelay: time.Second, Registerer: reg, Handler: "\xff", Tier: 1}, "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tiered.NewSubscriber(gochannel.NewGoChannel(gochannel.Config{}, nil), tt.config, nil)
			require.ErrorContains(t, err, tt.want)
			require.Empty(t, instrumenttest.Gather(t, reg).Names(), "nothing registered")
		})
	}
	_, err := tiered.NewSubscriber(gochannel.NewGoChannel(gochannel.Config{}, nil),
		tiered.SubscriberConfig{MaxDelay: time.Second, Registerer: reg, Handler: "billing", Tier: tiered.RetiredTier}, nil)
	require.NoError(t, err)
	require.Equal(t, []string{"handler_name=billing,tier=retired"}, instrumenttest.Gather(t, reg).Series("retry_kafka_held_messages"))
}

// Messages that arrive due already are handed on in the order they
// arrived, without waiting for one another's Ack: a backend that delivers
// several records of a tier at once (a backlog, a short tier) keeps their
// order, as a tier keeps the order of a key's messages.
func TestSubscriber_handsOnDueMessagesInArrivalOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		feed := newFeedSubscriber()
		sub, err := tiered.NewSubscriber(feed, tiered.SubscriberConfig{MaxDelay: 10 * time.Second}, nil)
		require.NoError(t, err)
		defer func() { require.NoError(t, sub.Close()) }()
		ch, err := sub.Subscribe(context.Background(), "tier")
		require.NoError(t, err)

		const n = 200
		due := ms(time.Now().Add(-time.Second))
		go func() {
			for i := range n {
				msg := message.NewMessage(fmt.Sprint(i), nil)
				msg.Metadata.Set(tiered.KeyDueAt, due)
				feed.feed <- msg
			}
		}()
		for i := range n {
			got := receive(t, ch)
			require.Equal(t, fmt.Sprint(i), got.UUID, "message %d", i)
			// The Acks come after all of them: none waits for the one before.
			defer got.Ack()
		}
	})
}
