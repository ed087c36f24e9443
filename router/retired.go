package router

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// drainCheckInterval is how often the subscription of a retired tier asks
// the backend whether its group has consumed everything.
const drainCheckInterval = 5 * time.Second

// retiredTier is a tier topic of an earlier policy that still holds
// messages for the handler.
type retiredTier struct {
	topic string
	delay time.Duration
	lag   int64
}

// findRetiredTiers lists the handler's tier topics that the current policy
// no longer has and that still hold messages its group has not consumed.
// It needs a backend that implements [tiered.Inspector] and the default
// topic names ({topic}.{handler}.retry.{delay}), from which the delay of a
// retired tier can be read back; otherwise it finds nothing.
func (w *Retrier) findRetiredTiers(ctx context.Context, topics tiered.Topics) ([]retiredTier, error) {
	inspector, ok := w.config.Backend.(tiered.Inspector)
	if !ok || w.config.TopicName != nil {
		return nil, nil
	}
	prefix := tiered.DefaultTopicName(tiered.TopicParams{Topic: topics.Main, Handler: topics.Handler, Tier: 1, Delay: time.Second})
	prefix = strings.TrimSuffix(prefix, tiered.FormatDelay(time.Second))
	names, err := inspector.ListTopics(ctx, prefix)
	if errors.Is(err, errors.ErrUnsupported) {
		return nil, nil // a wrapper around a backend that cannot inspect
	}
	if err != nil {
		return nil, fmt.Errorf("list the topics of earlier tiers: %w", err)
	}
	var retired []retiredTier
	for _, name := range names {
		if _, current := topics.Tier(name); current {
			continue
		}
		d, err := time.ParseDuration(strings.TrimPrefix(name, prefix))
		if err != nil || d <= 0 || tiered.FormatDelay(d) != strings.TrimPrefix(name, prefix) {
			continue // not a name this library gives a tier
		}
		lag, err := inspector.Lag(ctx, name, name) // a tier's group is named after its topic
		if err != nil {
			return nil, fmt.Errorf("retired tier %s: %w", name, err)
		}
		if lag > 0 {
			retired = append(retired, retiredTier{topic: name, delay: d, lag: lag})
		}
	}
	return retired, nil
}

// drainingSubscriber is the subscriber of a retired tier: it ends its
// subscription once the backend reports that the group has consumed every
// message of the topic, which stops the handler on the router.
type drainingSubscriber struct {
	message.Subscriber
	inspector tiered.Inspector
	group     string
	logger    watermill.LoggerAdapter

	mu     sync.Mutex
	cancel []context.CancelFunc
}

// Subscribe subscribes with a context that ends when topic is drained.
func (s *drainingSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	ctx, cancel := context.WithCancel(ctx)
	out, err := s.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		cancel()
		return nil, err
	}
	s.mu.Lock()
	s.cancel = append(s.cancel, cancel)
	s.mu.Unlock()
	go s.watch(ctx, cancel, topic)
	return out, nil
}

// watch cancels the subscription once topic is drained, or returns when
// ctx ends.
func (s *drainingSubscriber) watch(ctx context.Context, cancel context.CancelFunc, topic string) {
	ticker := time.NewTicker(drainCheckInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		lag, err := s.inspector.Lag(ctx, topic, s.group)
		if err != nil {
			if ctx.Err() == nil {
				s.logger.Info("Cannot tell whether a retired tier is drained, asking again later", watermill.LogFields{"topic": topic, "err": err.Error()})
			}
			continue
		}
		if lag == 0 {
			s.logger.Info("Retired tier drained, no longer consuming it", watermill.LogFields{"topic": topic})
			cancel()
			return
		}
	}
}

// Close ends the subscriptions and closes the wrapped subscriber.
func (s *drainingSubscriber) Close() error {
	s.mu.Lock()
	for _, cancel := range s.cancel {
		cancel()
	}
	s.mu.Unlock()
	return s.Subscriber.Close()
}

// newDrainingSubscriber wraps sub, the subscription of a retired tier.
func newDrainingSubscriber(sub message.Subscriber, backend tiered.Backend, group string, logger watermill.LoggerAdapter) (*drainingSubscriber, error) {
	inspector, ok := backend.(tiered.Inspector)
	if !ok {
		return nil, errors.New("the backend cannot tell when a retired tier is drained")
	}
	return &drainingSubscriber{Subscriber: sub, inspector: inspector, group: group, logger: logger}, nil
}
