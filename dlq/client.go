package dlq

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/retry-kafka/retry-kafka/pubsub"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Config configures a [Client].
type Config struct {
	// Backend is the broker to work on: the *kafka.Backend or
	// *redisstream.Backend that pubsub.Open returns, or one built with
	// kafka.New or redisstream.New. The client uses its brokers (Redis:
	// its client), consumer group prefix and trimming, opens its own
	// connections (Kafka) and never closes the backend.
	//
	// Required.
	Backend tiered.Backend
}

// unwrap returns the backend that b wraps (pubsub/embedded's Kafka backend
// wraps a *kafka.Backend, to stop its broker on Close), or b.
func unwrap(b tiered.Backend) tiered.Backend {
	for {
		w, ok := b.(interface{ Unwrap() tiered.Backend })
		if !ok {
			return b
		}
		b = w.Unwrap()
	}
}

// Validate reports every problem with the config without changing it.
func (c Config) Validate() error {
	switch unwrap(c.Backend).(type) {
	case nil:
		return errors.New("Backend is nil")
	case *kafka.Backend, *redisstream.Backend:
		return nil
	default:
		return fmt.Errorf("%w: %T (use a Kafka or Redis backend)", ErrUnsupportedBackend, c.Backend)
	}
}

// Client reads and operates the dead-letter and tier topics of one broker,
// Kafka or Redis, through one API. Build it with [New] or [Open]; it is
// safe for concurrent use. Close it when done.
type Client struct {
	d      driver
	logger watermill.LoggerAdapter
	owned  tiered.Backend // opened by Open, closed by Close

	mu     sync.Mutex
	closed bool
}

// New returns a client on config.Backend.
func New(config Config, logger watermill.LoggerAdapter) (*Client, error) {
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	var d driver
	var err error
	switch b := unwrap(config.Backend).(type) {
	case *kafka.Backend:
		d, err = newKafkaDriver(b)
	case *redisstream.Backend:
		d = newRedisDriver(b)
	}
	if err != nil {
		return nil, err
	}
	return &Client{d: d, logger: logger}, nil
}

// Open opens the backend that rawURL names, with the URLs of pubsub.Open
// (kafka://host:9092?group_prefix=app., redis://host:6379/0, ...), and
// returns a client on it; Close closes both. Use the URL the application
// uses, so that consumer group prefixes agree. mem:// and kafka://embedded
// live inside the process that opened them, so Open refuses them with an
// error wrapping [ErrUnsupportedBackend]; use [New] with that backend.
func Open(ctx context.Context, rawURL string, logger watermill.LoggerAdapter) (*Client, error) {
	if scheme, rest, _ := strings.Cut(rawURL, "://"); scheme == "mem" || scheme == "memory" {
		return nil, fmt.Errorf("%w: %s keeps its messages inside the process that opened it; use kafka:// or redis://", ErrUnsupportedBackend, rawURL)
	} else if host, _, _ := strings.Cut(rest, "?"); scheme == "kafka" && strings.TrimSuffix(host, "/") == "embedded" {
		return nil, fmt.Errorf("%w: %s would start a new, empty broker in this process; give the address of the running one (kafka://host:port), or use New with the application's backend", ErrUnsupportedBackend, rawURL)
	}
	backend, err := pubsub.Open(ctx, rawURL, logger)
	if err != nil {
		return nil, err
	}
	c, err := New(Config{Backend: backend}, logger)
	if err != nil {
		_ = backend.Close()
		return nil, err
	}
	c.owned = backend
	return c, nil
}

// Close releases the client's connections, and the backend when [Open]
// opened it. It is safe to call more than once.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	errs := []error{c.d.close()}
	if c.owned != nil {
		errs = append(errs, c.owned.Close())
	}
	return errors.Join(errs...)
}

// checkOpen returns ErrClosed after Close.
func (c *Client) checkOpen() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	return nil
}

// check checks the client and a topic name.
func (c *Client) check(topic string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	if topic == "" {
		return errors.New("empty topic name")
	}
	return nil
}

// Backend names the broker kind: "kafka" or "redis".
func (c *Client) Backend() string { return c.d.system() }

// Messages returns the messages of topic (a dead-letter topic, a tier,
// any topic) that filter selects, oldest first within each partition
// (Kafka: partition after partition). It reads without consuming: no
// consumer group of the application moves. The topic is read up to its
// end as the iteration starts, so messages that arrive meanwhile are not
// included. Messages are streamed: memory does not grow with the topic.
//
// An error (unknown topic, bad filter, broker) ends the iteration as its
// last pair.
func (c *Client) Messages(ctx context.Context, topic string, filter Filter) iter.Seq2[*Message, error] {
	return func(yield func(*Message, error) bool) {
		m, err := c.prepareScan(ctx, topic, filter)
		if err != nil {
			yield(nil, err)
			return
		}
		stopped := errors.New("stopped")
		err = c.d.scan(ctx, topic, scanOptions{since: filter.From, until: filter.To}, func(msg *Message) error {
			if !m.match(msg) {
				return nil
			}
			if !yield(msg, nil) {
				return stopped
			}
			return nil
		})
		if err != nil && !errors.Is(err, stopped) {
			yield(nil, err)
		}
	}
}

// prepareScan checks the client, topic and filter.
func (c *Client) prepareScan(ctx context.Context, topic string, filter Filter) (*matcher, error) {
	if err := c.check(topic); err != nil {
		return nil, err
	}
	m, err := filter.compile()
	if err != nil {
		return nil, err
	}
	if filter.Key != "" && !c.d.hasKeys() {
		return nil, fmt.Errorf("%w: Redis stream entries have no record key; filter by UUID, handler, reason or time instead", ErrInvalidFilter)
	}
	if err := c.d.exists(ctx, topic); err != nil {
		return nil, err
	}
	return m, nil
}

// Get returns the message of topic with id ([Message.ID]: "partition/offset"
// on Kafka, the entry ID on Redis), or an error wrapping [ErrNotFound].
func (c *Client) Get(ctx context.Context, topic, id string) (*Message, error) {
	if err := c.check(topic); err != nil {
		return nil, err
	}
	if err := c.d.exists(ctx, topic); err != nil {
		return nil, err
	}
	return c.d.get(ctx, topic, id)
}

// Depth is how much a topic holds.
type Depth struct {
	// Messages is the number of messages stored (Kafka: records between
	// each partition's start and end offsets; Redis: the stream length).
	Messages int64
	// Oldest is the broker time of the oldest message stored; zero when
	// the topic is empty.
	Oldest time.Time
}

// Depth returns how many messages topic holds and when the oldest was
// stored: for a dead-letter topic, its backlog (nothing in the
// application consumes it). It is cheap enough to call at every metrics
// scrape: on Kafka one metadata request, two offset requests per
// partition leader and one small fetch per non-empty partition; on Redis
// two commands.
func (c *Client) Depth(ctx context.Context, topic string) (Depth, error) {
	if err := c.check(topic); err != nil {
		return Depth{}, err
	}
	n, firsts, err := c.d.depth(ctx, topic)
	if err != nil {
		return Depth{}, err
	}
	d := Depth{Messages: n}
	for _, m := range firsts {
		if d.Oldest.IsZero() || m.Time.Before(d.Oldest) {
			d.Oldest = m.Time
		}
	}
	return d, nil
}

// isDeadLetterTopic checks that topic exists and is a dead-letter topic:
// named "….dlq" by the default rule, or holding a first message with a
// poison reason (a custom TopicNamer).
func (c *Client) isDeadLetterTopic(ctx context.Context, topic string) error {
	if err := c.d.exists(ctx, topic); err != nil {
		return err
	}
	if strings.HasSuffix(topic, dlqSuffix) {
		return nil
	}
	_, firsts, err := c.d.depth(ctx, topic)
	if err != nil {
		return err
	}
	for _, m := range firsts {
		if m.Reason() != "" {
			return nil
		}
	}
	return fmt.Errorf("%w: %q: its name does not end in %q and its first message carries no %s; "+
		"redrive and purge work on a handler's dead-letter topic (retryctl topics lists them)",
		ErrNotDeadLetterTopic, topic, dlqSuffix, "reason_poisoned")
}

// driver is what a broker does for the client. Kafka and Redis implement
// it; everything above it (filters, stats, redrive, export) is written
// once.
type driver interface {
	tiered.Inspector

	// system is "kafka" or "redis".
	system() string
	// hasKeys reports whether messages have record keys (Kafka).
	hasKeys() bool
	// exists returns nil when topic exists, an error wrapping
	// ErrUnknownTopic when it does not.
	exists(ctx context.Context, topic string) error
	// depth returns the number of messages stored and the first message
	// of each non-empty partition.
	depth(ctx context.Context, topic string) (int64, []*Message, error)
	// heads returns, per partition, the first message group has not
	// consumed (group before the backend's prefix).
	heads(ctx context.Context, topic, group string) ([]*Message, error)
	// get returns one message by ID.
	get(ctx context.Context, topic, id string) (*Message, error)
	// scan calls fn with every message of topic after opts.from (from
	// the start when it is empty), up to the topic's end as the call
	// starts, partition after partition. fn's error ends the scan and is
	// returned.
	scan(ctx context.Context, topic string, opts scanOptions, fn func(*Message) error) error
	// publish writes msgs and returns once the broker stored each.
	publish(ctx context.Context, msgs []outgoing) error
	// checkpoint returns the position group committed on topic, and
	// whether it committed one.
	checkpoint(ctx context.Context, topic, group string) (position, bool, error)
	// commit stores pos as group's position on topic.
	commit(ctx context.Context, topic, group string, pos position) error
	// purge deletes what sel selects.
	purge(ctx context.Context, topic string, sel purgeSelection) (PurgeResult, error)
	close() error
}

// scanOptions bound a scan.
type scanOptions struct {
	// from is where a scan resumes; the zero position is the start.
	from position
	// since and until are hints: the scan may skip what was stored before
	// since, or at or after until (the caller still filters).
	since, until time.Time
}

// position is where a scan stands in a topic: per Kafka partition the
// next offset to read, on Redis the last entry ID read.
type position struct {
	offsets map[int32]int64
	id      string
}

func (p position) isZero() bool { return len(p.offsets) == 0 && p.id == "" }

// after returns the position just after msg.
func (p *position) advance(msg *Message, kafka bool) {
	if kafka {
		if p.offsets == nil {
			p.offsets = map[int32]int64{}
		}
		p.offsets[msg.Partition] = msg.Offset + 1
		return
	}
	p.id = msg.ID
}

func (p position) clone() position {
	out := position{id: p.id}
	if p.offsets != nil {
		out.offsets = make(map[int32]int64, len(p.offsets))
		for k, v := range p.offsets {
			out.offsets[k] = v
		}
	}
	return out
}

func (p position) equal(q position) bool {
	if p.id != q.id || len(p.offsets) != len(q.offsets) {
		return false
	}
	for k, v := range p.offsets {
		if w, ok := q.offsets[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// outgoing is a message to publish.
type outgoing struct {
	topic string
	msg   *Message
}

// readAhead calls fn with each message that produce emits, in order, while
// produce, on a goroutine of its own, reads the next page: reading overlaps
// with what fn does, and one page waits at most. fn's error stops produce
// (its context ends) and is returned; else produce's.
func readAhead(ctx context.Context, produce func(ctx context.Context, emit func([]*Message) error) error, fn func(*Message) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make(chan []*Message, 1)
	readErr := make(chan error, 1)
	go func() {
		defer close(pages)
		readErr <- produce(ctx, func(page []*Message) error {
			select {
			case pages <- page:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	for page := range pages {
		for _, m := range page {
			if err := fn(m); err != nil {
				cancel()
				for range pages { // let produce end
				}
				return err
			}
		}
	}
	return <-readErr
}
