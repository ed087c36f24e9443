// Package memory is the in-memory backend: Watermill's GoChannel pub/sub
// behind the [tiered.Backend] interface. It is for unit tests, examples and
// trying the API; it keeps every message in memory for the life of the
// process and loses them all when it ends.
//
// Each subscription receives every message of its topic, the way a consumer
// group per handler does on a broker, one at a time: the next only after
// the one before was acked or nacked, like a partition (the order between
// messages is not kept). The GoChannel is persistent: a
// subscription made after a publish still receives that message, so tier
// messages published before a router starts are not lost. A second
// subscription to the same topic (a router restarted in the same process)
// receives the topic's whole history again.
package memory

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/retry-kafka/retry-kafka/internal/backendurl"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Backend is the in-memory backend.
type Backend struct {
	pubSub *gochannel.GoChannel
	logger watermill.LoggerAdapter
}

// Open returns an in-memory backend for rawURL, which is "mem://" or
// "memory://" and nothing more: the in-memory backend has no host, path or
// parameters, and anything after "://" is an error that says so.
func Open(rawURL string, logger watermill.LoggerAdapter) (*Backend, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok || scheme != "mem" && scheme != "memory" {
		return nil, backendurl.Error("mem", rawURL, `it must be "mem://" (or "memory://")`)
	}
	if rest != "" {
		return nil, backendurl.Error("mem", rawURL, "nothing may follow %q, found %q: the in-memory backend has no host, path or parameters",
			scheme+"://", backendurl.Redact(rest))
	}
	return New(logger), nil
}

// New returns an in-memory backend.
func New(logger watermill.LoggerAdapter) *Backend {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &Backend{
		pubSub: gochannel.NewGoChannel(gochannel.Config{Persistent: true}, logger),
		logger: logger,
	}
}

// Publisher returns the shared publisher.
func (b *Backend) Publisher() message.Publisher { return publisher{b.pubSub} }

// Subscriber returns a subscriber whose Close ends only its own
// subscriptions.
func (b *Backend) Subscriber(tiered.SubscribeParams) (message.Subscriber, error) {
	ctx, cancel := context.WithCancel(context.Background())
	return &subscriber{pubSub: b.pubSub, ctx: ctx, cancel: cancel}, nil
}

// Prepare does nothing: topics need no creation in memory.
func (b *Backend) Prepare(context.Context, tiered.Topics) error { return nil }

// Close closes the GoChannel and every subscription on it.
func (b *Backend) Close() error { return b.pubSub.Close() }

// publisher keeps callers from closing the shared GoChannel.
type publisher struct{ pubSub *gochannel.GoChannel }

// appendedKey carries the time a message was published, from the
// publisher to the subscriber, which turns it into the message's
// tiered.Delivery: what a broker's append time is elsewhere.
const appendedKey = "_retry_mem_appended_ms"

// Publish publishes msgs to topic, stamping each with the time, which the
// subscriber hands on as tiered.Delivery.AppendTime.
func (p publisher) Publish(topic string, msgs ...*message.Message) error {
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	for _, msg := range msgs {
		msg.Metadata.Set(appendedKey, now)
	}
	return p.pubSub.Publish(topic, msgs...)
}

func (publisher) Close() error { return nil }

type subscriber struct {
	pubSub *gochannel.GoChannel
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
}

// Subscribe relays the GoChannel's messages one at a time: the next only
// after the one before was acked or nacked, as a broker delivers a
// partition. (GoChannel alone hands out every message at once, so a
// holding subscriber on a tier would hold all of them.)
func (s *subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	in, err := s.pubSub.Subscribe(ctx, topic)
	if err != nil {
		stop()
		cancel()
		return nil, err
	}
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		defer stop()
		defer cancel()
		for msg := range in {
			if v, ok := msg.Metadata[appendedKey]; ok {
				delete(msg.Metadata, appendedKey)
				if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
					msg.SetContext(tiered.WithDelivery(msg.Context(), &tiered.Delivery{AppendTime: time.UnixMilli(ms)}))
				}
			}
			select {
			case out <- msg:
			case <-ctx.Done():
				msg.Nack()
				continue
			}
			select {
			case <-msg.Acked():
			case <-msg.Nacked():
			case <-ctx.Done():
			}
		}
	}()
	return out, nil
}

func (s *subscriber) Close() error {
	s.once.Do(s.cancel)
	return nil
}
