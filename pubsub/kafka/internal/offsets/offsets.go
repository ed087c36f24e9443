// Package offsets tracks the records of one Kafka partition from delivery to
// resolution, and says how far the partition may be committed: up to the
// oldest record not yet resolved, however out of order the others resolve.
//
// A record is resolved when the handler is done with it (Ack) and every copy
// attached to it (a tier or dead-letter copy being produced) is confirmed.
// Committing offset N tells the group "start at N", so the commit point is
// the offset of the oldest unresolved record, or the offset after the newest
// record when every record is resolved.
//
// A record that was acked can still take a copy (Watermill's InstantAck
// acks before the handler runs): until the next [Tracker.Settle] hands out a
// commit point past it, [Record.Attach] makes it unresolved again. After
// that, Attach refuses, and the caller must produce the copy before
// returning instead.
package offsets

import (
	"slices"
	"sync"
)

// Tracker follows one partition. Its methods and those of its records are
// safe for concurrent use.
type Tracker struct {
	mu     sync.Mutex
	window int64
	added  bool
	next   int64 // the offset after the newest record added
	// queue holds, in offset order, every unresolved record, and resolved
	// ones that have not reached its front yet.
	queue   []*Record
	commit  int64 // the commit point the last Settle handed out
	settled bool  // Settle handed out a commit point
	closed  bool
	changed chan struct{} // closed at the next change, made on demand
}

// Record is one record of a partition.
type Record struct {
	t      *Tracker
	offset int64
	acked  bool
	copies int
	queued bool
}

// New returns a tracker that lets at most window offsets lie between the
// oldest unresolved record and the next record ([Tracker.HasRoom]).
func New(window int) *Tracker {
	return &Tracker{window: int64(max(window, 1))}
}

// Add starts tracking the record at offset, which must be above every
// offset added before. It returns nil after [Tracker.Close].
func (t *Tracker) Add(offset int64) *Record {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	r := &Record{t: t, offset: offset, queued: true}
	t.queue = append(t.queue, r)
	t.added = true
	t.next = offset + 1
	return r
}

// Offset is the record's offset.
func (r *Record) Offset() int64 { return r.offset }

func (r *Record) resolved() bool { return r.acked && r.copies == 0 }

// Ack says the handler is done with the record.
func (r *Record) Ack() {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if r.acked {
		return
	}
	r.acked = true
	if r.resolved() {
		t.resolvedLocked()
	}
}

// Attach says a copy of the record is being produced: the record is
// unresolved until [Record.Confirm]. It reports false, attaching nothing,
// when the tracker is closed or the record is resolved and a commit point
// past it was handed out.
func (r *Record) Attach() bool {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || r.resolved() && t.settled && r.offset < t.commit {
		return false
	}
	r.copies++
	if !r.queued {
		i, _ := slices.BinarySearchFunc(t.queue, r.offset, func(q *Record, off int64) int {
			switch {
			case q.offset < off:
				return -1
			case q.offset > off:
				return 1
			}
			return 0
		})
		t.queue = slices.Insert(t.queue, i, r)
		r.queued = true
	}
	t.signalLocked()
	return true
}

// Confirm says one attached copy was confirmed.
func (r *Record) Confirm() {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if r.copies == 0 {
		return
	}
	r.copies--
	if r.resolved() {
		t.resolvedLocked()
	}
}

func (t *Tracker) resolvedLocked() {
	t.popLocked()
	t.signalLocked()
}

// popLocked drops resolved records from the queue's front.
func (t *Tracker) popLocked() {
	i := 0
	for i < len(t.queue) && t.queue[i].resolved() {
		t.queue[i].queued = false
		t.queue[i] = nil
		i++
	}
	if i > 0 {
		t.queue = t.queue[i:]
		if cap(t.queue) > 64 && len(t.queue) < cap(t.queue)/4 {
			t.queue = slices.Clone(t.queue)
		}
	}
}

func (t *Tracker) signalLocked() {
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
}

// lowestLocked is the commit point: the oldest unresolved offset, or the
// offset after the newest record.
func (t *Tracker) lowestLocked() int64 {
	t.popLocked()
	if len(t.queue) > 0 {
		return t.queue[0].offset
	}
	return t.next
}

// Changed returns a channel that is closed at the next change: a record
// resolved, a copy attached, or the tracker closed.
func (t *Tracker) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.changed == nil {
		t.changed = make(chan struct{})
	}
	return t.changed
}

// HasRoom reports whether a record may be added: fewer than window offsets
// lie between the oldest unresolved record and the next.
func (t *Tracker) HasRoom() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.added || t.next-t.lowestLocked() < t.window
}

// Unresolved returns how many records are not resolved.
func (t *Tracker) Unresolved() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, r := range t.queue {
		if !r.resolved() {
			n++
		}
	}
	return n
}

// Settle returns the commit point and, from now on, refuses copies of the
// resolved records below it. ok is false while no record was added.
func (t *Tracker) Settle() (commit int64, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.settleLocked()
}

func (t *Tracker) settleLocked() (int64, bool) {
	if !t.added {
		return 0, false
	}
	t.commit = t.lowestLocked()
	t.settled = true
	return t.commit, true
}

// Close settles the tracker a last time and returns the commit point; it
// adds and attaches nothing afterwards.
func (t *Tracker) Close() (commit int64, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	t.signalLocked()
	return t.settleLocked()
}
