package instrument

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Names of the dead-letter gauges, read at scrape time.
const (
	NameDeadLetterMessages = namespace + "_dlq_messages"
	NameDeadLetterOldest   = namespace + "_dlq_oldest_seconds"
	NameDeadLetterErrors   = namespace + "_dlq_read_errors_total"
)

// DeadLetterCacheAge is how long a dead-letter topic's depth, once read,
// is reported without reading it again: scrapes closer together than that
// (two Prometheus servers, a dashboard's refresh) cost the broker nothing.
const DeadLetterCacheAge = 5 * time.Second

// deadLetterReadTimeout bounds the reading of one dead-letter topic's
// depth at a scrape.
const deadLetterReadTimeout = 10 * time.Second

// DepthFunc reads how many messages a dead-letter topic holds and when
// the broker stored the oldest (zero when it is empty).
type DepthFunc func(ctx context.Context, topic string) (messages int64, oldest time.Time, err error)

// DeadLetters is a prometheus.Collector of the depth of handlers'
// dead-letter topics and the age of their oldest message. It reads each
// topic at scrape time, at most once per cache age (concurrent scrapes
// share one read); the age is computed at each scrape from the oldest
// message's time. Handlers are added with [DeadLetters.Watch]; a handler
// watched with two topics (two handlers of one name on two topics) reports
// their sum and the older of their oldest.
type DeadLetters struct {
	maxAge time.Duration
	now    func() time.Time

	messagesDesc, oldestDesc, errorsDesc *prometheus.Desc

	mu     sync.Mutex
	topics map[string]*depthReading // by topic
}

type depthReading struct {
	handler  string
	read     DepthFunc
	at       time.Time // when read; zero before the first read
	messages int64
	oldest   time.Time
	ok       bool  // the last read succeeded
	errors   int64 // failed reads so far
}

// NewDeadLetters returns a collector that watches nothing yet, whose
// readings are cached for maxAge; now is its clock (time.Now when nil).
func NewDeadLetters(maxAge time.Duration, now func() time.Time) *DeadLetters {
	if now == nil {
		now = time.Now
	}
	labels := []string{LabelHandler}
	return &DeadLetters{
		maxAge: maxAge,
		now:    now,
		messagesDesc: prometheus.NewDesc(NameDeadLetterMessages,
			"Messages in the handler's dead-letter topic, read at scrape time (cached for a few seconds).", labels, nil),
		oldestDesc: prometheus.NewDesc(NameDeadLetterOldest,
			"Age of the oldest message in the handler's dead-letter topic, in seconds (0 when empty).", labels, nil),
		errorsDesc: prometheus.NewDesc(NameDeadLetterErrors,
			"Failed reads of the depth of the handler's dead-letter topic; a scrape whose read failed leaves the two gauges out.", labels, nil),
		topics: map[string]*depthReading{},
	}
}

// RegisterDeadLetters registers a collector with [DeadLetterCacheAge] on
// reg, or returns the one an earlier call registered there.
func RegisterDeadLetters(reg prometheus.Registerer) (*DeadLetters, error) {
	if reg == nil {
		return nil, errors.New("nil prometheus.Registerer")
	}
	var added []prometheus.Collector
	return registerOrReuse(reg, NewDeadLetters(DeadLetterCacheAge, nil), &added)
}

// Watch adds the dead-letter topic of handler, read with read. Watching a
// topic again changes nothing.
func (d *DeadLetters) Watch(handler, topic string, read DepthFunc) error {
	switch {
	case read == nil:
		return errors.New("nil dead-letter depth reader")
	case handler == "" || topic == "":
		return fmt.Errorf("handler %q with dead-letter topic %q: both must be set", handler, topic)
	case !utf8.ValidString(handler):
		return fmt.Errorf("handler %q is not valid UTF-8, which metric labels must be", handler)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.topics[topic]; !ok {
		d.topics[topic] = &depthReading{handler: handler, read: read}
	}
	return nil
}

// Describe implements prometheus.Collector.
func (d *DeadLetters) Describe(ch chan<- *prometheus.Desc) {
	ch <- d.messagesDesc
	ch <- d.oldestDesc
	ch <- d.errorsDesc
}

// Collect implements prometheus.Collector: it reads the topics whose
// reading is older than the cache age, then reports every handler.
func (d *DeadLetters) Collect(ch chan<- prometheus.Metric) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	var wg sync.WaitGroup
	for topic, r := range d.topics {
		if !r.at.IsZero() && now.Sub(r.at) < d.maxAge {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), deadLetterReadTimeout)
			defer cancel()
			messages, oldest, err := r.read(ctx, topic)
			r.at, r.ok = now, err == nil
			if err != nil {
				r.errors++
				return
			}
			r.messages, r.oldest = messages, oldest
		})
	}
	wg.Wait()

	type sum struct {
		messages, errors int64
		oldest           time.Time
		ok               bool
	}
	byHandler := map[string]*sum{}
	for _, r := range d.topics {
		s := byHandler[r.handler]
		if s == nil {
			s = &sum{ok: true}
			byHandler[r.handler] = s
		}
		s.errors += r.errors
		s.ok = s.ok && r.ok
		s.messages += r.messages
		if r.messages > 0 && !r.oldest.IsZero() && (s.oldest.IsZero() || r.oldest.Before(s.oldest)) {
			s.oldest = r.oldest
		}
	}
	handlers := make([]string, 0, len(byHandler))
	for h := range byHandler {
		handlers = append(handlers, h)
	}
	sort.Strings(handlers)
	for _, h := range handlers {
		s := byHandler[h]
		// Labels are valid UTF-8 (Watch checks): MustNewConstMetric
		// cannot panic here.
		ch <- prometheus.MustNewConstMetric(d.errorsDesc, prometheus.CounterValue, float64(s.errors), h)
		if !s.ok {
			continue
		}
		age := 0.0
		if !s.oldest.IsZero() {
			age = max(now.Sub(s.oldest), 0).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(d.messagesDesc, prometheus.GaugeValue, float64(s.messages), h)
		ch <- prometheus.MustNewConstMetric(d.oldestDesc, prometheus.GaugeValue, age, h)
	}
}
