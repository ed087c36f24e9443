// Quickstart shows non-blocking tiered retries and a dead-letter queue on a
// Watermill router, end to end, with no broker installed: by default it
// starts an embedded Kafka-protocol broker in this process and talks to it
// through the real watermill-kafka client.
//
// It publishes five orders to a "billing" handler. Order 1 succeeds at once;
// order 2 fails once and succeeds from the 1s tier; order 3 fails twice and
// succeeds from the 2s tier; order 4's card is declined, a permanent error
// that goes straight to the dead-letter topic; order 5 fails every time and
// lands in the dead-letter topic after its last tier. Every step is printed
// with the time it happened; then the dead-letter topic's contents, read
// with the dlq package as an operator (or retryctl) would. Then the story
// ends: the bug is fixed, the dead letters are redriven through the dlq
// API, both orders are charged, and the program exits 0.
//
//	go run ./examples/quickstart                                  # embedded broker
//	go run ./examples/quickstart -broker kafka://127.0.0.1:9092   # a real cluster
//	go run ./examples/quickstart -broker redis://127.0.0.1:6379/0 # Redis Streams
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/pubsub/embedded"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// errCardDeclined is a business error that no retry can fix.
var errCardDeclined = errors.New("card declined")

// failures says how many times each order fails before it succeeds; -1 is
// always, and order-4 fails permanently.
var failures = map[string]int{"order-1": 0, "order-2": 1, "order-3": 2, "order-4": 0, "order-5": -1}

func main() {
	broker := flag.String("broker", envOr("BROKER_URL", "kafka://embedded"), "backend URL: kafka://embedded, kafka://host:9092, redis://host:6379/0 or mem://")
	verbose := flag.Bool("v", false, "print the library's and Watermill's logs")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *broker, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, brokerURL string, verbose bool) error {
	var logger watermill.LoggerAdapter = watermill.NopLogger{}
	if verbose {
		logger = watermill.NewStdLogger(false, false)
	}
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Printf("%6.2fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	// The demo uses a fresh topic per run, so let it create that topic on a
	// real cluster.
	if strings.HasPrefix(brokerURL, "kafka://") && !strings.Contains(brokerURL, "?") && brokerURL != "kafka://embedded" {
		brokerURL += "?create_topics=true"
	}
	backend, err := embedded.Open(ctx, brokerURL, logger) // kafka://embedded, or any URL pubsub.Open takes
	if err != nil {
		return err
	}
	defer backend.Close()
	say("backend %s open", brokerURL)

	r, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		return err
	}
	r.AddMiddleware(wmiddleware.Recoverer)

	retrying, err := router.New(router.Config{
		Backend: backend,
		Policy: tiered.Policy{
			Delays:      []time.Duration{time.Second, 2 * time.Second},
			MaxAttempts: 3, // one try, then the 1s tier, then the 2s tier
		},
	}, logger)
	if err != nil {
		return err
	}

	// A fresh topic per run, so that a real cluster's earlier runs do not
	// show up in this one.
	topic := "quickstart.orders." + watermill.NewShortUUID()[:8]
	var mu sync.Mutex
	calls := map[string]int{}
	var fixed atomic.Bool // the bug fix, deployed at the end of the story
	charged := make(chan string, 16)
	dead := make(chan string, 16)

	h, err := retrying.AddConsumerHandler(r, "billing", topic, func(msg *message.Message) error {
		order := string(msg.Payload)
		mu.Lock()
		calls[order]++
		n := calls[order]
		mu.Unlock()
		where := "main topic"
		if tier := msg.Metadata.Get(tiered.KeyTier); tier != "" {
			where = "tier " + tier
		}
		if r := msg.Metadata.Get(tiered.KeyRedriveCount); r != "" {
			where += ", redriven"
		}
		switch {
		case fixed.Load():
		case order == "order-4":
			say("%s  attempt %d (%s): card declined, permanent", order, n, where)
			return tiered.Permanent(errCardDeclined)
		case failures[order] < 0 || n <= failures[order]:
			say("%s  attempt %d (%s): payment gateway timeout", order, n, where)
			return errors.New("payment gateway timeout")
		}
		say("%s  attempt %d (%s): charged", order, n, where)
		charged <- order
		return nil
	})
	if err != nil {
		return err
	}
	say("handler billing: tiers %s, dead letters %s", strings.Join(h.Topics.Tiers, ", "), h.Topics.DLQ)

	// Watch the dead-letter topic, to print when a message lands there.
	dlqSub, err := backend.Subscriber(tiered.SubscribeParams{Group: "quickstart-dlq-watcher", Topic: h.Topics.DLQ})
	if err != nil {
		return err
	}
	defer dlqSub.Close()
	r.AddConsumerHandler("dlq-watcher", h.Topics.DLQ, dlqSub, func(msg *message.Message) error {
		say("%s  in the dead-letter topic", msg.Payload)
		dead <- string(msg.Payload)
		return nil
	})

	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	select {
	case <-r.Running():
	case err := <-runErr:
		return err
	}
	say("router running")

	for _, order := range []string{"order-1", "order-2", "order-3", "order-4", "order-5"} {
		msg := message.NewMessage(watermill.NewUUID(), []byte(order))
		if err := backend.Publisher().Publish(topic, msg); err != nil {
			return fmt.Errorf("publish %s: %w", order, err)
		}
	}
	say("published 5 orders to %s", topic)
	if err := await(ctx, map[string]bool{"order-1": true, "order-2": true, "order-3": true}, charged,
		map[string]bool{"order-4": true, "order-5": true}, dead); err != nil {
		return err
	}

	// The operator's side: the dlq package (what retryctl runs on) reads
	// the dead-letter topic without consuming it, and redrives it.
	ops, err := dlq.New(dlq.Config{Backend: backend}, logger)
	if errors.Is(err, dlq.ErrUnsupportedBackend) {
		fmt.Printf("\n(%s keeps its messages in this process: the redrive part of the demo needs kafka:// or redis://)\n", brokerURL)
		return r.Close()
	}
	if err != nil {
		return err
	}
	defer ops.Close()
	var letters []string
	for msg, err := range ops.Messages(ctx, h.Topics.DLQ, dlq.Filter{}) {
		if err != nil {
			return err
		}
		letters = append(letters, fmt.Sprintf("%s uuid=%s attempts=%d reason=%q", msg.Payload, msg.UUID, msg.Attempts(), msg.Reason()))
	}
	sort.Strings(letters)
	fmt.Printf("\nDead-letter topic %s holds %d messages:\n", h.Topics.DLQ, len(letters))
	for _, l := range letters {
		fmt.Println("  " + l)
	}
	fmt.Println()

	say("fixing the bug: the gateway client stops timing out, order-4's customer updates their card")
	fixed.Store(true)
	res, err := ops.Redrive(ctx, dlq.RedriveParams{Topic: h.Topics.DLQ})
	if err != nil {
		return err
	}
	say("redrove %d dead letters to %s (same UUIDs and payloads, retry metadata cleared)", res.Moved, topic)
	if err := await(ctx, map[string]bool{"order-4": true, "order-5": true}, charged, nil, dead); err != nil {
		return err
	}
	say("every order charged; the dead-letter topic keeps its copies until purged (retryctl dlq purge)")
	return r.Close()
}

// await waits until every order of wantCharged was charged and every
// order of wantDead reached the dead-letter topic, for at most a minute.
func await(ctx context.Context, wantCharged map[string]bool, charged <-chan string, wantDead map[string]bool, dead <-chan string) error {
	deadline := time.After(time.Minute)
	for len(wantCharged)+len(wantDead) > 0 {
		select {
		case order := <-charged:
			delete(wantCharged, order)
		case order := <-dead:
			delete(wantDead, order)
		case <-deadline:
			return fmt.Errorf("orders still waiting after a minute: charged %v, dead-lettered %v", keys(wantCharged), keys(wantDead))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
