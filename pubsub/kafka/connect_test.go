package kafka_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/pubsub"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// hungBroker listens on a free port, accepts connections and never
// answers, like a hung broker or a wrong port behind a proxy.
func hungBroker(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

// New, kafka.Open and pubsub.Open return at their context's deadline
// against brokers that never answer, with an error that says so.
func TestNew_honoursTheContextAgainstAHungBroker(t *testing.T) {
	addr := hungBroker(t)
	for name, open := range map[string]func(ctx context.Context) error{
		"kafka.New": func(ctx context.Context) error {
			_, err := kafka.New(ctx, kafka.Config{Brokers: []string{addr}}, nil)
			return err
		},
		"kafka.Open": func(ctx context.Context) error {
			_, err := kafka.Open(ctx, "kafka://"+addr, nil)
			return err
		},
		"pubsub.Open": func(ctx context.Context) error {
			_, err := pubsub.Open(ctx, "kafka://"+addr, nil)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			err := open(ctx)
			elapsed := time.Since(start)
			require.ErrorIs(t, err, kafka.ErrNoAnswer)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.ErrorContains(t, err, addr)
			require.Less(t, elapsed, 10*time.Second, "returned %v after a 1s deadline", elapsed)
		})
	}
}

// Prepare returns at its context's deadline when the broker stops
// answering (here: the embedded broker holds every metadata request).
func TestPrepare_honoursTheContextAgainstAHungBroker(t *testing.T) {
	env := kafkatest.StartEmbedded(t)
	b := kafkatest.New(t, env.Config())
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	env.Cluster.ControlKey(int16(kmsg.Metadata), func(kmsg.Request) (kmsg.Response, error, bool) {
		env.Cluster.KeepControl()
		env.Cluster.SleepControl(func() { <-release })
		return nil, nil, false
	})
	topics, err := fastPolicy.Topics(kafkatest.Topic(t), "billing", nil)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err = b.Prepare(ctx, topics)
	require.ErrorIs(t, err, kafka.ErrNoAnswer)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, `handler "billing"`)
	require.Less(t, time.Since(start), 10*time.Second)
}

// Subscribe and Close hammered concurrently: no race (under -race), every
// Subscribe either fails with ErrClosed or returns a channel that is closed
// by the time Close returns, and nothing runs on after Close.
func TestSubscriber_subscribeAndCloseConcurrently(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	topic := kafkatest.Topic(t)
	for _, delay := range []time.Duration{0, time.Second} {
		for range 10 {
			sub, err := b.Subscriber(tiered.SubscribeParams{Group: topic + ".g", Topic: topic, Delay: delay})
			require.NoError(t, err)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var chans []<-chan *message.Message
			var errs []error
			for range 5 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ch, err := sub.Subscribe(context.Background(), topic)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, err)
						return
					}
					chans = append(chans, ch)
				}()
			}
			closeErr := make(chan error, 1)
			go func() { closeErr <- sub.Close() }()
			wg.Wait()
			require.NoError(t, <-closeErr)
			mu.Lock()
			for _, err := range errs {
				require.ErrorIs(t, err, kafka.ErrClosed)
			}
			for _, ch := range chans {
				select {
				case _, ok := <-ch:
					require.False(t, ok, "no message was published")
				default:
					t.Fatal("a subscription's channel must be closed when Close returns")
				}
			}
			mu.Unlock()
			_, err = sub.Subscribe(context.Background(), topic)
			require.ErrorIs(t, err, kafka.ErrClosed)
			require.NoError(t, sub.Close(), "Close is idempotent")
		}
	}
}
