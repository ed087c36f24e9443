package kafka

import (
	"sync"

	"github.com/IBM/sarama"
)

// recordQueue is a tier claim's read-ahead: a goroutine moves records from
// Sarama's channel into it while the claim waits for its head to be due,
// so that Sarama never pauses the partition for a slow reader (a pause
// costs at least 100ms to resume, which all the records behind the head
// would be late by), up to maxBytes of records (always at least one).
type recordQueue struct {
	mu       sync.Mutex
	recs     []*sarama.ConsumerMessage
	bytes    int
	maxBytes int
	closed   bool
	changed  chan struct{}
}

func newRecordQueue(maxBytes int) *recordQueue { return &recordQueue{maxBytes: maxBytes} }

func recordBytes(cm *sarama.ConsumerMessage) int {
	n := len(cm.Key) + len(cm.Value)
	for _, h := range cm.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

func (q *recordQueue) signalLocked() {
	if q.changed != nil {
		close(q.changed)
		q.changed = nil
	}
}

func (q *recordQueue) waitLocked() <-chan struct{} {
	if q.changed == nil {
		q.changed = make(chan struct{})
	}
	return q.changed
}

// push adds cm once it fits; false when done closed first.
func (q *recordQueue) push(cm *sarama.ConsumerMessage, done <-chan struct{}) bool {
	size := recordBytes(cm)
	for {
		q.mu.Lock()
		if len(q.recs) == 0 || q.bytes+size <= q.maxBytes {
			q.recs = append(q.recs, cm)
			q.bytes += size
			q.signalLocked()
			q.mu.Unlock()
			return true
		}
		ch := q.waitLocked()
		q.mu.Unlock()
		select {
		case <-ch:
		case <-done:
			return false
		}
	}
}

// close says no record will be pushed any more.
func (q *recordQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.signalLocked()
	q.mu.Unlock()
}

// pop returns the oldest record; false when the queue is closed and empty,
// or done closed first.
func (q *recordQueue) pop(done <-chan struct{}) (*sarama.ConsumerMessage, bool) {
	for {
		q.mu.Lock()
		if len(q.recs) > 0 {
			cm := q.recs[0]
			q.recs[0] = nil
			q.recs = q.recs[1:]
			q.bytes -= recordBytes(cm)
			q.signalLocked()
			q.mu.Unlock()
			return cm, true
		}
		if q.closed {
			q.mu.Unlock()
			return nil, false
		}
		ch := q.waitLocked()
		q.mu.Unlock()
		select {
		case <-ch:
		case <-done:
			return nil, false
		}
	}
}
