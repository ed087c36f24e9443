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

// deadLetterReadTimeout bounds the reading of one dead-letter topic's
// depth at a scrape.
const deadLetterReadTimeout = 10 * time.Second

// DepthFunc reads how many messages a dead-letter topic holds and when
// the broker stored the oldest (zero when it is empty).
type DepthFunc func(ctx context.Context, topic string) (messages int64, oldest time.Time, err error)

// DeadLetters is a prometheus.Collector of the depth of handlers'
// dead-letter topics and the age of their oldest message. It reads them
// at scrape time, at most once per MaxAge for each topic (concurrent
// scrapes share one read); the age is computed at each scrape from the
// oldest message's time.
type DeadLetters struct {
	read   DepthFunc
	maxAge time.Duration
	now    func() time.Time
	queues []deadLetterQueue

	messagesDesc, oldestDesc, errorsDesc *prometheus.Desc

	mu    sync.Mutex
	cache map[string]*depthReading // by topic
}

type deadLetterQueue struct{ handler, topic string }

type depthReading struct {
	at       time.Time // when read; zero before the first read
	messages int64
	oldest   time.Time
	ok       bool  // the last read succeeded
	errors   int64 // failed reads so far
}

// NewDeadLetters returns the collector of the dead-letter topics dlqs
// (topic by handler name), read with read and cached for maxAge; now is
// its clock (time.Now when nil).
func NewDeadLetters(read DepthFunc, dlqs map[string]string, maxAge time.Duration, now func() time.Time) (*DeadLetters, error) {
	var errs []error
	if read == nil {
		errs = append(errs, errors.New("nil depth reader"))
	}
	if len(dlqs) == 0 {
		errs = append(errs, errors.New("no dead-letter topic to watch"))
	}
	if maxAge <= 0 {
		errs = append(errs, fmt.Errorf("cache age is %v, must be positive", maxAge))
	}
	d := &DeadLetters{read: read, maxAge: maxAge, now: now, cache: map[string]*depthReading{}}
	if d.now == nil {
		d.now = time.Now
	}
	for handler, topic := range dlqs {
		switch {
		case handler == "" || topic == "":
			errs = append(errs, fmt.Errorf("handler %q with dead-letter topic %q: both must be set", handler, topic))
		case !utf8.ValidString(handler):
			errs = append(errs, fmt.Errorf("handler %q is not valid UTF-8, which metric labels must be", handler))
		default:
			d.queues = append(d.queues, deadLetterQueue{handler: handler, topic: topic})
			d.cache[topic] = &depthReading{}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sort.Slice(d.queues, func(i, j int) bool { return d.queues[i].handler < d.queues[j].handler })
	labels := []string{LabelHandler}
	d.messagesDesc = prometheus.NewDesc(NameDeadLetterMessages,
		"Messages in the handler's dead-letter topic, read at scrape time (cached).", labels, nil)
	d.oldestDesc = prometheus.NewDesc(NameDeadLetterOldest,
		"Age of the oldest message in the handler's dead-letter topic, in seconds (0 when empty).", labels, nil)
	d.errorsDesc = prometheus.NewDesc(NameDeadLetterErrors,
		"Failed reads of the handler's dead-letter topic depth; the gauges are left out of a scrape whose read failed.", labels, nil)
	return d, nil
}

// Describe implements prometheus.Collector.
func (d *DeadLetters) Describe(ch chan<- *prometheus.Desc) {
	ch <- d.messagesDesc
	ch <- d.oldestDesc
	ch <- d.errorsDesc
}

// Collect implements prometheus.Collector: it reads the topics whose
// reading is older than the cache age, then reports every topic.
func (d *DeadLetters) Collect(ch chan<- prometheus.Metric) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	var wg sync.WaitGroup
	for topic, r := range d.cache { // one reading per topic, whatever shares it
		if !r.at.IsZero() && now.Sub(r.at) < d.maxAge {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), deadLetterReadTimeout)
			defer cancel()
			messages, oldest, err := d.read(ctx, topic)
			r.at = now
			r.ok = err == nil
			if err != nil {
				r.errors++
				return
			}
			r.messages, r.oldest = messages, oldest
		})
	}
	wg.Wait()
	for _, q := range d.queues {
		r := d.cache[q.topic]
		ch <- prometheus.MustNewConstMetric(d.errorsDesc, prometheus.CounterValue, float64(r.errors), q.handler)
		if !r.ok {
			continue
		}
		age := 0.0
		if !r.oldest.IsZero() && r.messages > 0 {
			age = max(now.Sub(r.oldest), 0).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(d.messagesDesc, prometheus.GaugeValue, float64(r.messages), q.handler)
		ch <- prometheus.MustNewConstMetric(d.oldestDesc, prometheus.GaugeValue, age, q.handler)
	}
}
