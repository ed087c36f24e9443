package dlq

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/retry-kafka/retry-kafka/tiered"
)

const (
	dlqSuffix   = ".dlq"
	retryMarker = ".retry."
)

// Topology is the retry topology found on a broker: every handler that
// has tier or dead-letter topics.
type Topology struct {
	// Handlers are sorted by topic, then name.
	Handlers []Handler
}

// Handler is one handler's topics, as found on the broker.
type Handler struct {
	// Topic is the handler's own (main) topic.
	Topic string
	// Name is the handler's name.
	Name string
	// Tiers are the handler's tier topics found, shortest delay first.
	// An earlier policy's tiers (retired, still holding messages) are
	// listed too.
	Tiers []Queue
	// DLQ is the handler's dead-letter topic; nil when it has none yet.
	DLQ *Queue
}

// Queue is a tier or dead-letter topic and what waits in it.
type Queue struct {
	// Topic is the topic's name.
	Topic string
	// Delay is a tier's delay; 0 for a dead-letter topic.
	Delay time.Duration
	// Group is, for a tier, the consumer group that consumes it (before
	// the backend's prefix; the tier topic's own name); "" for a
	// dead-letter topic, which the application does not consume.
	Group string
	// Depth is, for a tier, the messages its group has not consumed yet
	// (waiting, or held until due); for a dead-letter topic, every
	// message stored.
	Depth int64
	// Oldest is the broker time of the oldest message counted in Depth
	// (Kafka: of each partition's first, the oldest); zero when Depth is
	// 0.
	Oldest time.Time
	// HeadDue is, for a tier, the earliest due time among the messages
	// at the head of its partitions: when the next one will reach the
	// handler. Zero for a dead-letter topic and an empty tier.
	HeadDue time.Time
}

// Age is how long the oldest message has waited at now; 0 when empty.
func (q Queue) Age(now time.Time) time.Duration {
	if q.Oldest.IsZero() {
		return 0
	}
	return max(now.Sub(q.Oldest), 0)
}

// queueName is a tier or dead-letter topic name read by the default rule
// (tiered.DefaultTopicName): base is "{topic}.{handler}".
type queueName struct {
	base  string
	dlq   bool
	delay time.Duration
}

// parseQueueName reads name by the default naming rule; ok is false for
// a name the rule does not make.
func parseQueueName(name string) (queueName, bool) {
	if base, ok := strings.CutSuffix(name, dlqSuffix); ok && strings.Contains(base, ".") {
		return queueName{base: base, dlq: true}, true
	}
	i := strings.LastIndex(name, retryMarker)
	if i <= 0 {
		return queueName{}, false
	}
	base, delay := name[:i], name[i+len(retryMarker):]
	d, err := time.ParseDuration(delay)
	if err != nil || d <= 0 || tiered.FormatDelay(d) != delay || !strings.Contains(base, ".") {
		return queueName{}, false
	}
	return queueName{base: base, delay: d}, true
}

// splitBase tells topic and handler apart in base ("{topic}.{handler}"),
// which dots in either make ambiguous: the metadata of a message in one
// of its topics says it (sample); else the longest prefix that is an
// existing topic; else the last dot.
func splitBase(base string, sample *Message, topics map[string]bool) (topic, handler string) {
	if sample != nil {
		t, h := sample.OriginalTopic(), sample.Handler()
		if t != "" && h != "" && t+"."+h == base {
			return t, h
		}
	}
	for i := len(base) - 1; i > 0; i-- {
		if base[i] == '.' && topics[base[:i]] {
			return base[:i], base[i+1:]
		}
	}
	i := strings.LastIndex(base, ".")
	return base[:i], base[i+1:]
}

// Topology finds the handlers whose tier and dead-letter topics are named
// by the default rule ("{topic}.{handler}.retry.{delay}",
// "{topic}.{handler}.dlq") among the topics that start with prefix ("":
// every topic), and measures each of their queues. A topic named
// otherwise (a custom TopicNamer) is not found, but every other call of
// the client takes it by name.
func (c *Client) Topology(ctx context.Context, prefix string) (*Topology, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	names, err := c.d.ListTopics(ctx, prefix)
	if err != nil {
		return nil, err
	}
	all := names
	if prefix != "" {
		// Main topics may sit outside the prefix.
		if all, err = c.d.ListTopics(ctx, ""); err != nil {
			return nil, err
		}
	}
	exists := make(map[string]bool, len(all))
	for _, n := range all {
		exists[n] = true
	}

	type found struct {
		name  string
		q     queueName
		queue Queue
		first *Message
		err   error
	}
	var queues []*found
	for _, n := range names {
		if q, ok := parseQueueName(n); ok {
			queues = append(queues, &found{name: n, q: q})
		}
	}
	// Measure the queues a few at a time: each is a few round trips.
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, f := range queues {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if f.q.dlq {
				f.queue, f.first, f.err = c.measureDLQ(ctx, f.name)
			} else {
				f.queue, f.first, f.err = c.measureTier(ctx, f.name, f.q.delay)
			}
		})
	}
	wg.Wait()

	byBase := map[string]*Handler{}
	var errs []error
	// A sample message of any topic of a handler names its topic and
	// handler; look at every queue of a base before splitting it.
	samples := map[string]*Message{}
	for _, f := range queues {
		if f.err != nil {
			if !errors.Is(f.err, ErrUnknownTopic) { // deleted meanwhile
				errs = append(errs, f.err)
			}
			continue
		}
		if f.first != nil && samples[f.q.base] == nil {
			samples[f.q.base] = f.first
		}
	}
	for _, f := range queues {
		if f.err != nil {
			continue
		}
		h := byBase[f.q.base]
		if h == nil {
			topic, name := splitBase(f.q.base, samples[f.q.base], exists)
			h = &Handler{Topic: topic, Name: name}
			byBase[f.q.base] = h
		}
		if f.q.dlq {
			q := f.queue
			h.DLQ = &q
		} else {
			h.Tiers = append(h.Tiers, f.queue)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	t := &Topology{}
	for _, h := range byBase {
		slices.SortFunc(h.Tiers, func(a, b Queue) int { return int(a.Delay - b.Delay) })
		t.Handlers = append(t.Handlers, *h)
	}
	slices.SortFunc(t.Handlers, func(a, b Handler) int {
		if c := strings.Compare(a.Topic, b.Topic); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return t, nil
}

// measureDLQ returns a dead-letter topic's queue and its first message.
func (c *Client) measureDLQ(ctx context.Context, topic string) (Queue, *Message, error) {
	n, firsts, err := c.d.depth(ctx, topic)
	if err != nil {
		return Queue{}, nil, err
	}
	q := Queue{Topic: topic, Depth: n}
	var first *Message
	for _, m := range firsts {
		if q.Oldest.IsZero() || m.Time.Before(q.Oldest) {
			q.Oldest, first = m.Time, m
		}
	}
	return q, first, nil
}

// measureTier returns a tier's queue and its head message.
func (c *Client) measureTier(ctx context.Context, topic string, delay time.Duration) (Queue, *Message, error) {
	q := Queue{Topic: topic, Delay: delay, Group: topic}
	lag, err := c.d.Lag(ctx, topic, q.Group)
	if err != nil {
		return Queue{}, nil, err
	}
	q.Depth = lag
	heads, err := c.d.heads(ctx, topic, q.Group)
	if err != nil {
		return Queue{}, nil, err
	}
	var head *Message
	for _, m := range heads {
		if q.Oldest.IsZero() || m.Time.Before(q.Oldest) {
			q.Oldest = m.Time
		}
		if due := m.DueAt(); !due.IsZero() && (q.HeadDue.IsZero() || due.Before(q.HeadDue)) {
			q.HeadDue, head = due, m
		}
		if head == nil {
			head = m
		}
	}
	if q.Depth == 0 {
		q.Oldest, q.HeadDue = time.Time{}, time.Time{}
	}
	return q, head, nil
}

// firstTier returns the tier topic with the shortest delay of the handler
// name on topic, found by the default naming rule; ok is false when it has
// none.
func (c *Client) firstTier(ctx context.Context, topic, name string) (string, time.Duration, bool, error) {
	base := topic + "." + name
	names, err := c.d.ListTopics(ctx, base+retryMarker)
	if err != nil {
		return "", 0, false, err
	}
	var best string
	var bestDelay time.Duration
	for _, n := range names {
		q, ok := parseQueueName(n)
		if !ok || q.dlq || q.base != base {
			continue
		}
		if best == "" || q.delay < bestDelay {
			best, bestDelay = n, q.delay
		}
	}
	return best, bestDelay, best != "", nil
}
