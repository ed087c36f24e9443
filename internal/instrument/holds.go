package instrument

import (
	"container/list"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Holds counts the messages that holding subscribers hold right now, and
// when the oldest of them began to wait, per handler and tier. It is a
// prometheus.Collector read at scrape time: a hold costs a lock and a list
// element, a scrape one pass over the handlers and tiers.
type Holds struct {
	now func() time.Time

	heldDesc, oldestDesc *prometheus.Desc

	mu   sync.Mutex
	sets map[holdKey]*list.List // of time.Time, oldest first
}

type holdKey struct{ handler, tier string }

// NewHolds returns an empty Holds; now is its clock (time.Now when nil).
func NewHolds(now func() time.Time) *Holds {
	if now == nil {
		now = time.Now
	}
	labels := []string{LabelHandler, LabelTier}
	return &Holds{
		now: now,
		heldDesc: prometheus.NewDesc(NameHeld,
			"Messages a holding subscriber holds now until their due time, by handler and tier.", labels, nil),
		oldestDesc: prometheus.NewDesc(NameOldestHeld,
			"How long the message held longest now has been held, in seconds (0 when none is held), by handler and tier.", labels, nil),
		sets: map[holdKey]*list.List{},
	}
}

// Track returns the tracker of one handler's tier, whose series exist (at
// 0) from now on. Trackers of the same handler and tier share their holds.
func (h *Holds) Track(handler, tier string) *HoldTracker {
	key := holdKey{handler, tier}
	h.mu.Lock()
	defer h.mu.Unlock()
	set, ok := h.sets[key]
	if !ok {
		set = list.New()
		h.sets[key] = set
	}
	return &HoldTracker{h: h, set: set}
}

// HoldTracker records the holds of one handler's tier.
type HoldTracker struct {
	h   *Holds
	set *list.List
}

// Hold records that a message began to wait. Call the function it returns
// when the wait ends, however it ends.
func (t *HoldTracker) Hold() (release func()) {
	t.h.mu.Lock()
	// The time is read under the lock, so the list stays sorted: its front
	// is the oldest hold.
	e := t.set.PushBack(t.h.now())
	t.h.mu.Unlock()
	return func() {
		t.h.mu.Lock()
		t.set.Remove(e)
		t.h.mu.Unlock()
	}
}

// Describe implements prometheus.Collector.
func (h *Holds) Describe(ch chan<- *prometheus.Desc) {
	ch <- h.heldDesc
	ch <- h.oldestDesc
}

// Collect implements prometheus.Collector.
func (h *Holds) Collect(ch chan<- prometheus.Metric) {
	type sample struct {
		key    holdKey
		n      int
		oldest time.Time
	}
	h.mu.Lock()
	now := h.now()
	samples := make([]sample, 0, len(h.sets))
	for key, set := range h.sets {
		s := sample{key: key, n: set.Len()}
		if front := set.Front(); front != nil {
			s.oldest = front.Value.(time.Time)
		}
		samples = append(samples, s)
	}
	h.mu.Unlock()
	for _, s := range samples {
		age := 0.0
		if !s.oldest.IsZero() {
			age = max(now.Sub(s.oldest), 0).Seconds()
		}
		// NewConstMetric fails only on label values that are not UTF-8,
		// which validated handler names never are; never panic on them.
		if m, err := prometheus.NewConstMetric(h.heldDesc, prometheus.GaugeValue, float64(s.n), s.key.handler, s.key.tier); err == nil {
			ch <- m
		}
		if m, err := prometheus.NewConstMetric(h.oldestDesc, prometheus.GaugeValue, age, s.key.handler, s.key.tier); err == nil {
			ch <- m
		}
	}
}
