package kafka_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

var windowPolicy = tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}

// failMarked fails the first attempt of messages with metadata "fail".
func failMarked(msg *message.Message, attempt int) error {
	if msg.Metadata.Get("fail") != "" {
		return failFirst(msg, attempt)
	}
	return nil
}

func numbered(from, to int, fail bool) []*message.Message {
	var msgs []*message.Message
	for i := from; i < to; i++ {
		msg := message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
		if fail {
			msg.Metadata.Set("fail", "1")
		}
		msgs = append(msgs, msg)
	}
	return msgs
}

// mainCalls counts, per payload, the calls on topic.
func mainCalls(calls []call, topic string) map[string]int {
	n := map[string]int{}
	for _, c := range calls {
		if c.topic == topic {
			n[c.payload]++
		}
	}
	return n
}

// A partition closed while copies in the middle of its window cannot be
// produced commits up to the oldest of them: what was resolved before is
// not handled again, what was not is handled again, and nothing is lost.
func TestKafka_closeMidWindowRedeliversOnlyTheUnresolved(t *testing.T) {
	env := kafkatest.StartEmbedded(t)
	cfg := env.Config()
	cfg.DrainTimeout = time.Second
	b := kafkatest.New(t, cfg)
	topic := kafkatest.Topic(t)
	topics := prepare(t, b, windowPolicy, topic, "billing")

	h1 := newHarness(t, b, topic, "billing", windowPolicy, failMarked)
	h1.publish(numbered(0, 5, false)...)
	h1.waitCalls(5)
	stop := produceFailure(t, env, topics.Tiers[0])
	h1.publish(numbered(5, 10, true)...) // fail once; their copies cannot be produced
	h1.publish(numbered(10, 12, false)...)
	h1.waitCalls(12)
	h1.stop()
	require.Equal(t, int64(5), committed(t, env.Brokers, topics.Group(topic), topic), "committed up to the oldest unresolved record")
	stop()

	h2 := newHarness(t, b, topic, "billing", windowPolicy, failMarked)
	require.Eventually(t, func() bool {
		calls, _ := h2.snapshot()
		return len(calls) >= 7+5 // 5..11 again from the main topic, 5..9 from the tier
	}, 60*time.Second, 20*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	calls, _ := h2.snapshot()
	again := mainCalls(calls, topic)
	for i := range 5 {
		require.Zero(t, again[strconv.Itoa(i)], "message %d was resolved before the close", i)
	}
	for i := 5; i < 12; i++ {
		require.Equal(t, 1, again[strconv.Itoa(i)], "message %d was not resolved: handled again once", i)
	}
	fromTier := mainCalls(calls, topics.Tiers[0])
	for i := 5; i < 10; i++ {
		require.GreaterOrEqual(t, fromTier[strconv.Itoa(i)], 1, "message %d reached its tier", i)
	}
}

// A rebalance in the middle of a window: the partition's owner drains it
// (copies confirmed during the drain are committed, so nothing is handled
// again), and what is still unresolved when the drain expires is handled
// again by the next owner; nothing is lost.
func TestKafka_rebalanceMidWindow(t *testing.T) {
	for _, tc := range []struct {
		name string
		// confirmDuringDrain: the copies start succeeding while the first
		// consumer drains, else only after the drain expired.
		confirmDuringDrain bool
		drain              time.Duration
	}{{"copies confirmed during the drain", true, 8 * time.Second}, {"drain expires first", false, 2 * time.Second}} {
		t.Run(tc.name, func(t *testing.T) {
			env := kafkatest.StartEmbedded(t)
			cfg := env.Config()
			cfg.DrainTimeout = tc.drain
			b := kafkatest.New(t, cfg)
			topic := kafkatest.Topic(t)
			topics := prepare(t, b, windowPolicy, topic, "billing")
			stop := produceFailure(t, env, topics.Tiers[0])

			var mu sync.Mutex
			var all []call
			record := func(msg *message.Message, _ int) error {
				mu.Lock()
				from := message.SubscribeTopicFromCtx(msg.Context())
				all = append(all, call{payload: string(msg.Payload), topic: from})
				mu.Unlock()
				if from == topic {
					return errors.New("fails on the main topic, whichever consumer handles it")
				}
				return nil
			}
			a := newHarness(t, b, topic, "billing", windowPolicy, record)
			a.publish(numbered(0, 10, true)...)
			a.waitCalls(10)

			joined := time.Now()
			newHarness(t, b, topic, "billing", windowPolicy, record)
			if tc.confirmDuringDrain {
				time.Sleep(time.Second) // the first consumer is draining now
				stop()
			} else {
				waitGroup(t, env.Brokers, topics.Group(topic), 2)
				require.GreaterOrEqual(t, time.Since(joined), cfg.DrainTimeout, "the rebalance waited for the drain")
				stop()
			}
			require.Eventually(t, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(mainCalls(all, topics.Tiers[0])) == 10
			}, 60*time.Second, 20*time.Millisecond, "every message reaches its tier")
			time.Sleep(time.Second)
			mu.Lock()
			defer mu.Unlock()
			main := mainCalls(all, topic)
			for i := range 10 {
				n := main[strconv.Itoa(i)]
				if tc.confirmDuringDrain {
					require.Equal(t, 1, n, "message %d: its copy was confirmed in the drain", i)
				} else {
					require.Equal(t, 2, n, "message %d: unresolved when the drain expired, handled again once", i)
				}
			}
		})
	}
}

// killChildEnv makes the test binary the consumer process of
// TestKafka_killedWithAFullWindow.
const killChildEnv = "RETRY_KAFKA_WINDOW_CHILD"

// A consumer killed (SIGKILL) with a full window loses nothing, and what
// is handled again is bounded by the window: the consumer, a process of
// its own, handles messages whose copies cannot be produced until its
// window is full, and is killed; a new consumer then handles every message,
// the window's again.
func TestKafka_killedWithAFullWindow(t *testing.T) {
	if os.Getenv(killChildEnv) != "" {
		runWindowChild(t)
		return
	}
	const window, n = 16, 50
	env := kafkatest.StartEmbedded(t)
	b := kafkatest.New(t, env.Config())
	topic := kafkatest.Topic(t)
	topics := prepare(t, b, windowPolicy, topic, "billing")
	stop := produceFailure(t, env, topics.Tiers[0])

	cmd := exec.Command(os.Args[0], "-test.run=^TestKafka_killedWithAFullWindow$")
	cmd.Env = append(os.Environ(), killChildEnv+"=1", "KAFKA_BROKERS="+strings.Join(env.Brokers, ","),
		"CHILD_TOPIC="+topic, "CHILD_WINDOW="+strconv.Itoa(window))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var mu sync.Mutex
	var childCalls []string
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "CHILD ready":
				close(ready)
			case strings.HasPrefix(line, "CHILD call "):
				mu.Lock()
				childCalls = append(childCalls, strings.TrimPrefix(line, "CHILD call "))
				mu.Unlock()
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("the consumer process did not start")
	}
	require.NoError(t, b.Publisher().Publish(topic, numbered(0, n, true)...))
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(childCalls) >= window
	}, 60*time.Second, 20*time.Millisecond)
	time.Sleep(2 * time.Second) // a consumer that ignored its window would go on
	mu.Lock()
	require.Len(t, childCalls, window, "the window stops the partition: %v", childCalls)
	handledByChild := append([]string(nil), childCalls...)
	mu.Unlock()

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	stop()

	h := newHarness(t, b, topic, "billing", windowPolicy, failMarked)
	require.Eventually(t, func() bool {
		calls, _ := h.snapshot()
		return len(mainCalls(calls, topics.Tiers[0])) == n
	}, 120*time.Second, 20*time.Millisecond, "every message reaches its tier: nothing lost")
	calls, _ := h.snapshot()
	again := mainCalls(calls, topic)
	require.Len(t, again, n)
	duplicates := 0
	for _, p := range handledByChild {
		duplicates += again[p]
	}
	t.Logf("killed with %d unresolved records: %d handled again", window, duplicates)
	require.LessOrEqual(t, duplicates, window, "duplicates bounded by the window")
}

// runWindowChild is the consumer process: a router whose handler prints
// each call and fails it, until the process is killed.
func runWindowChild(t *testing.T) {
	window, _ := strconv.Atoi(os.Getenv("CHILD_WINDOW"))
	topic := os.Getenv("CHILD_TOPIC")
	cfg := kafkatest.Env{Brokers: strings.Split(os.Getenv("KAFKA_BROKERS"), ",")}.Config()
	cfg.PartitionWindow = window
	ctx := context.Background()
	b, err := kafka.New(ctx, cfg, nil)
	require.NoError(t, err)
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	retrying, err := router.New(router.Config{Backend: b, Policy: windowPolicy}, nil)
	require.NoError(t, err)
	_, err = retrying.AddConsumerHandler(r, "billing", topic, func(msg *message.Message) error {
		if message.SubscribeTopicFromCtx(msg.Context()) == topic {
			fmt.Println("CHILD call " + string(msg.Payload))
		}
		return failMarked(msg, 1)
	})
	require.NoError(t, err)
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	fmt.Println("CHILD ready")
	select {} // until killed
}
