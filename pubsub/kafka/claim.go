package kafka

import (
	"context"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/pubsub/kafka/internal/offsets"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// claim is one partition of one session.
//
// Its goroutines: the caller's (ConsumeClaim) reads records and, on a
// handler's own topic, waits for each Ack; on a tier, one goroutine per
// message handed on waits for its Ack; a flusher marks the commit point
// every AutoCommit.Interval. When the session ends or the partition is
// taken away, ended closes: nothing new is handed on, and expired closes
// DrainTimeout later. finish waits until every message handed on is acked
// or nacked and every copy confirmed (or expired closed), then commits,
// cancels the messages' contexts and waits for the claim's goroutines.
type claim struct {
	s          *subscriber
	h          *groupHandler
	sess       sarama.ConsumerGroupSession
	topic      string
	partition  int32
	appendTime bool
	tracker    *offsets.Tracker
	fields     watermill.LogFields

	// ctx is the parent of every message's context. It ends after the
	// drain, not with the session, so that messages still being handled
	// when a session ends can finish.
	ctx    context.Context
	cancel context.CancelFunc

	endOnce  sync.Once
	ended    chan struct{}
	expired  chan struct{}
	stopWait func() bool

	mu          sync.Mutex
	outstanding int // handed on, not yet acked or nacked
	copying     int // copies being produced
	changed     chan struct{}

	goroutines sync.WaitGroup
	flushMu    sync.Mutex
	marked     int64

	// Tier topics: the lane of each key with a message in flight, and the
	// message last handed on before it was due, with its due time (under
	// mu).
	keys      map[string]*keyLane
	held      *delivery
	heldUntil time.Time
}

func (h *groupHandler) newClaim(sess sarama.ConsumerGroupSession, sc sarama.ConsumerGroupClaim) *claim {
	c := &claim{
		s:          h.s,
		h:          h,
		sess:       sess,
		topic:      sc.Topic(),
		partition:  sc.Partition(),
		appendTime: h.appendTime,
		tracker:    offsets.New(h.s.b.config.PartitionWindow),
		fields:     h.fields.Add(watermill.LogFields{"partition": sc.Partition()}),
		ended:      make(chan struct{}),
		expired:    make(chan struct{}),
		marked:     -1,
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.stopWait = context.AfterFunc(sess.Context(), c.end)
	if h.s.tier {
		c.keys = map[string]*keyLane{}
	}
	c.goroutines.Add(1)
	go c.flushEvery(h.s.config.Consumer.Offsets.AutoCommit.Interval)
	return c
}

// end stops handing records on and starts the drain's clock. A tier
// message handed on before it was due, which the holding subscriber holds,
// has its context cancelled at once, so that the hold ends and never holds
// a rebalance; messages being handled keep theirs until the drain expires.
func (c *claim) end() {
	c.endOnce.Do(func() {
		close(c.ended)
		time.AfterFunc(c.s.b.config.DrainTimeout, func() { close(c.expired) })
		c.mu.Lock()
		held, due := c.held, c.heldUntil
		c.mu.Unlock()
		if held != nil && time.Now().Before(due) {
			held.cancelMessage()
		}
	})
}

func (c *claim) over() bool {
	select {
	case <-c.ended:
		return true
	default:
		return false
	}
}

func (c *claim) isExpired() bool {
	select {
	case <-c.expired:
		return true
	default:
		return false
	}
}

// flushEvery marks the commit point every interval (and commits it when
// the application turned Sarama's AutoCommit off) until the claim ends.
func (c *claim) flushEvery(interval time.Duration) {
	defer c.goroutines.Done()
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if c.flush(c.tracker.Settle()) && !c.s.config.Consumer.Offsets.AutoCommit.Enable {
				c.sess.Commit()
			}
		case <-c.ended:
			return
		}
	}
}

// flush marks commit when it moved; it reports whether it did. It runs on
// the flusher, then (once it ended) in finish.
func (c *claim) flush(commit int64, ok bool) bool {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	if !ok || commit <= c.marked {
		return false
	}
	c.sess.MarkOffset(c.topic, c.partition, commit, "")
	c.marked = commit
	return true
}

// consume hands the claim's records on until the claim ends.
func (c *claim) consume(records <-chan *sarama.ConsumerMessage) {
	defer c.end()
	read := func() (*sarama.ConsumerMessage, bool) {
		select {
		case cm, ok := <-records:
			return cm, ok
		case <-c.ended:
			return nil, false
		}
	}
	next := read
	if c.s.tier {
		q := newRecordQueue(tierQueueBytes)
		c.goroutines.Add(1)
		go func() {
			defer c.goroutines.Done()
			defer q.close()
			for {
				cm, ok := read()
				if !ok || !q.push(cm, c.ended) {
					return
				}
			}
		}()
		next = func() (*sarama.ConsumerMessage, bool) { return q.pop(c.ended) }
	}
	for {
		if !c.waitRoom() {
			return
		}
		cm, ok := next()
		if !ok {
			return
		}
		rec := c.tracker.Add(cm.Offset)
		msg, err := c.unmarshal(cm)
		if err != nil {
			c.undecodable(cm, rec, err)
			continue
		}
		d := c.newDelivery(cm, msg)
		d.rec = rec
		if c.s.tier {
			// Hand on the head at once (the holding subscriber holds it
			// until due), but nothing more until it is due: records behind
			// it are due no earlier, and stay in the read-ahead.
			if !c.waitHeld() {
				return
			}
			due := c.dueOf(d)
			if !c.handOnTier(d) {
				return
			}
			if due.After(time.Now()) {
				c.mu.Lock()
				c.held, c.heldUntil = d, due
				c.mu.Unlock()
			}
		} else if !c.handOn(d) {
			return
		}
	}
}

// waitRoom waits until the window has room; false when the claim ended.
func (c *claim) waitRoom() bool {
	for !c.tracker.HasRoom() {
		changed := c.tracker.Changed()
		if c.tracker.HasRoom() {
			break
		}
		select {
		case <-changed:
		case <-c.ended:
			return false
		}
	}
	return true
}

// handOn hands a handler's own topic's message on and waits until it is
// acked: the partition's next message is handed on only then. A Nacked
// message is handed on again after NackResendSleep. It returns false when
// the claim ended.
func (c *claim) handOn(d *delivery) bool {
	msg := d.msg
	for {
		c.handedOn(1)
		select {
		case c.h.out <- msg:
		case <-c.ended:
			c.handedOn(-1)
			return false
		}
		acked, again := c.awaitAck(d, msg)
		if acked {
			return true
		}
		if !again {
			return false
		}
		msg = d.again()
	}
}

// awaitAck waits for msg's Ack or Nack. acked tells it was acked; again
// that it was nacked and must be handed on again (after the resend pause).
// Once the claim ended, it waits until expired, and a Nack is not handed
// on again.
func (c *claim) awaitAck(d *delivery, msg *message.Message) (acked, again bool) {
	defer c.handedOn(-1)
	select {
	case <-msg.Acked():
		d.rec.Ack()
		d.cancelMessage()
		return true, false
	case <-msg.Nacked():
		d.cancelMessage()
	case <-c.expired:
		return false, false
	}
	if c.over() {
		return false, false
	}
	t := time.NewTimer(c.s.b.config.NackResendSleep)
	defer t.Stop()
	select {
	case <-t.C:
		return false, !c.over()
	case <-c.ended:
		return false, false
	}
}

// handedOn counts messages handed on and not yet acked or nacked.
func (c *claim) handedOn(n int) {
	c.mu.Lock()
	c.outstanding += n
	c.signalLocked()
	c.mu.Unlock()
}

// copies counts copies being produced.
func (c *claim) copies(n int) {
	c.mu.Lock()
	c.copying += n
	c.signalLocked()
	c.mu.Unlock()
}

func (c *claim) signalLocked() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

// busy reports whether messages are out or copies in flight, and returns a
// channel closed at the next change.
func (c *claim) busy() (bool, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.outstanding == 0 && c.copying == 0 {
		return false, nil
	}
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	return true, c.changed
}

// dueOf returns when the holding subscriber will hand d's tier message on
// (tiered.Subscriber: its due time, but at most the append time, or the
// receipt, + the tier's delay when it lies past that by more than the
// slack), or the zero time for at once. The holding subscriber stays the
// judge; the claim only paces itself by it.
func (c *claim) dueOf(d *delivery) time.Time {
	due, ok, err := tiered.DueAt(d.msg.Metadata)
	if !ok || err != nil {
		return time.Time{}
	}
	now := time.Now()
	base := now
	if c.appendTime && !d.cm.Timestamp.IsZero() && d.cm.Timestamp.Before(now) {
		base = d.cm.Timestamp
	}
	slack := time.Millisecond + c.s.delay/100
	if limit := base.Add(c.s.delay + slack); due.After(limit) {
		due = base.Add(c.s.delay)
	}
	return due
}

// waitHeld waits until the tier message last handed on before it was due
// is due; false when the claim ended first.
func (c *claim) waitHeld() bool {
	c.mu.Lock()
	due := c.heldUntil
	c.mu.Unlock()
	wait := time.Until(due)
	if wait <= 0 {
		return true
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			// Timers run on the monotonic clock, due times on the wall
			// clock: wake up again if the wall clock is behind.
			if wait := time.Until(due); wait > 0 {
				t.Reset(wait)
				continue
			}
			return true
		case <-c.ended:
			return false
		}
	}
}

// handOnTier hands a due tier message on, and waits for its Ack on a
// goroutine of its own, so that due messages are handled concurrently:
// across keys, and in order within a key. A message whose key has a
// message in flight waits in its key's lane and is handed on, by that
// goroutine, once the one before was acked. Records without a key have no
// order to keep. False when the claim ended.
func (c *claim) handOnTier(d *delivery) bool {
	if c.over() {
		return false
	}
	var lane *keyLane
	if d.cm.Key != nil {
		key := string(d.cm.Key)
		c.mu.Lock()
		lane = c.keys[key]
		if lane != nil {
			lane.pending = append(lane.pending, d)
			c.mu.Unlock()
			return true
		}
		lane = &keyLane{key: key}
		c.keys[key] = lane
		c.mu.Unlock()
	}
	c.goroutines.Add(1)
	go func() {
		defer c.goroutines.Done()
		for d != nil {
			c.deliverTier(d)
			d = c.nextInLane(lane)
		}
	}()
	return true
}

// keyLane is the in-flight message of one key on a tier claim, and the
// due messages of that key waiting behind it.
type keyLane struct {
	key     string
	pending []*delivery
}

// nextInLane returns the next message of lane, or nil (and forgets the
// lane) when there is none or the claim ended.
func (c *claim) nextInLane(lane *keyLane) *delivery {
	if lane == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(lane.pending) == 0 || c.over() {
		delete(c.keys, lane.key)
		return nil
	}
	d := lane.pending[0]
	lane.pending[0] = nil
	lane.pending = lane.pending[1:]
	return d
}

// deliverTier hands d's message on until it is acked, nacked for the last
// time, or the claim lets it go.
func (c *claim) deliverTier(d *delivery) {
	msg := d.msg
	for {
		c.handedOn(1)
		select {
		case c.h.out <- msg:
		case <-c.ended:
			c.handedOn(-1)
			return
		}
		acked, again := c.awaitAck(d, msg)
		if acked || !again {
			return
		}
		msg = d.again()
	}
}

// finish drains the claim (see claim), commits and cancels the messages'
// contexts.
func (c *claim) finish() {
	c.end()
	c.stopWait()
	for {
		busy, changed := c.busy()
		if !busy {
			break
		}
		select {
		case <-changed:
			continue
		case <-c.expired:
		}
		break
	}
	if busy, _ := c.busy(); busy {
		c.s.logger.Info("Kafka partition released with messages or copies unresolved; they are delivered again", c.fields.Add(watermill.LogFields{
			"unresolved": c.tracker.Unresolved(), "drain_timeout": c.s.b.config.DrainTimeout.String(),
		}))
	}
	c.cancel()
	c.goroutines.Wait()
	if c.flush(c.tracker.Close()) && !c.s.config.Consumer.Offsets.AutoCommit.Enable {
		c.sess.Commit()
	}
}
