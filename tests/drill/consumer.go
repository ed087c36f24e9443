package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/pubsub"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// consumerConfig is what a consumer process is told by the drill.
type consumerConfig struct {
	URL     string
	Topic   string
	Handler string
	Policy  tiered.Policy
	Dir     string // where the journal goes
}

// flags of the consume subcommand; the drill passes them to each process.
func (c *consumerConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.URL, "url", "", "backend URL (pubsub.Open)")
	fs.StringVar(&c.Topic, "topic", "", "main topic")
	fs.StringVar(&c.Handler, "handler", "work", "handler name")
	fs.StringVar(&c.Dir, "dir", "", "journal directory")
	fs.Func("delays", "tier delays, comma-separated (2s,5s,10s)", func(s string) error {
		d, err := parseDelays(s)
		c.Policy.Delays = d
		return err
	})
	fs.IntVar(&c.Policy.MaxAttempts, "max-attempts", 0, "Policy.MaxAttempts")
}

func (c consumerConfig) args() []string {
	return []string{
		"-url", c.URL, "-topic", c.Topic, "-handler", c.Handler, "-dir", c.Dir,
		"-delays", formatDelays(c.Policy.Delays), "-max-attempts", fmt.Sprint(c.Policy.MaxAttempts),
	}
}

// consumeMain is the consumer process: a Watermill router with one handler
// wired by router.New(...).AddConsumerHandler on the backend of -url,
// following each message's plan and journaling every handling before it
// returns. It runs until SIGTERM/SIGINT (a graceful Close) or a SIGKILL.
func consumeMain(args []string) int {
	var c consumerConfig
	fs := flag.NewFlagSet("drill consume", flag.ContinueOnError)
	c.flags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger := watermill.NewStdLoggerWithOut(os.Stderr, false, false)
	if err := consume(c, logger); err != nil {
		logger.Error("Drill consumer failed", err, nil)
		return 1
	}
	return 0
}

func consume(c consumerConfig, logger watermill.LoggerAdapter) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	j, err := openJournal(c.Dir)
	if err != nil {
		return err
	}
	defer j.close()

	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	backend, err := pubsub.Open(openCtx, c.URL, logger)
	cancel()
	if err != nil {
		return fmt.Errorf("open %s: %w", c.URL, err)
	}
	defer backend.Close()

	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, logger)
	if err != nil {
		return err
	}
	retrying, err := router.New(router.Config{Backend: backend, Policy: c.Policy}, logger)
	if err != nil {
		return err
	}
	var topics tiered.Topics // set before the router runs
	h, err := retrying.AddConsumerHandler(r, c.Handler, c.Topic, func(msg *message.Message) error {
		return handle(j, topics, msg, logger)
	})
	if err != nil {
		return err
	}
	topics = h.Topics
	return r.Run(ctx)
}

// handle runs one attempt of msg: it reads the attempt from where the
// message came from, follows the plan, journals the handling (synced), and
// only then returns its result to the retry middleware.
func handle(j *journal, topics tiered.Topics, msg *message.Message, logger watermill.LoggerAdapter) error {
	h := handling{UUID: msg.UUID, Attempt: 1, Start: time.Now(), PID: os.Getpid()}
	p, err := readPlan(msg.Metadata)
	if err != nil {
		return tiered.Permanent(fmt.Errorf("message without a drill plan: %w", err))
	}
	if tier, ok := topics.Tier(message.SubscribeTopicFromCtx(msg.Context())); ok {
		h.Tier = tier
		info, err := tiered.ReadInfo(msg.Metadata)
		if err != nil {
			// The drill counts these as lost plans; the retry
			// middleware dead-letters them itself when it cannot read
			// them either.
			h.Attempt = -1
		} else {
			h.Attempt = info.Attempt + 1
		}
		h.Due, _, _ = tiered.DueAt(msg.Metadata)
	}
	h.Step = p.at(h.Attempt)
	if h.Attempt < 0 {
		h.Step = stepPermanent
	}
	h.End = time.Now()
	if err := j.write(h); err != nil {
		// Not journaled, so the handling must not count: crash before
		// anything is acked or published, as a kill would.
		logger.Error("Drill journal write failed, exiting", err, nil)
		os.Exit(3)
	}
	switch h.Step {
	case stepFail:
		return fmt.Errorf("drill: planned failure at attempt %d", h.Attempt)
	case stepPermanent:
		return tiered.Permanent(errors.New("drill: planned permanent failure"))
	}
	return nil
}
