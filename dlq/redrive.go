package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"

	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// DefaultMaxRedrives is the default of RedriveParams.MaxRedrives.
const DefaultMaxRedrives = 3

const (
	// redriveBatch is how many messages one confirmed publish moves.
	redriveBatch = 2000
	// flushEvery bounds how long moved messages wait in a batch (when a
	// rate limit makes batches fill slowly) and how long a checkpoint
	// waits while nothing is selected.
	flushEvery = 250 * time.Millisecond
	// maxExamples bounds RedriveResult.SkippedExamples.
	maxExamples = 100
	// commitTimeout bounds a checkpoint commit, which goes on when the
	// redrive's context ends (see flush).
	commitTimeout = 30 * time.Second
	// checkpointPrefix starts the consumer group names of checkpoints.
	checkpointPrefix = "retry-kafka.redrive."
)

// Destination says where a redrive sends messages.
type Destination int

const (
	// ToOriginalTopic sends each message to the topic its handler
	// consumes (retry_original_topic), where it starts a new life. The
	// default.
	ToOriginalTopic Destination = iota
	// ToFirstTier sends each message to its handler's first tier (the
	// tier topic with the shortest delay found), due at once: it is
	// handled as a first retry, apart from the main topic's flow.
	ToFirstTier
	// ToTopic sends every message to RedriveParams.TargetTopic.
	ToTopic
)

// String is "original", "first-tier" or "topic".
func (d Destination) String() string {
	switch d {
	case ToOriginalTopic:
		return "original"
	case ToFirstTier:
		return "first-tier"
	case ToTopic:
		return "topic"
	}
	return "Destination(" + strconv.Itoa(int(d)) + ")"
}

// Limiter paces a redrive. *rate.Limiter of golang.org/x/time/rate is one:
// rate.NewLimiter(100, 100) moves at most 100 messages a second.
type Limiter interface {
	// WaitN blocks until n messages may go, or ctx ends.
	WaitN(ctx context.Context, n int) error
}

// RedriveParams say what a redrive moves, where, and how fast.
type RedriveParams struct {
	// Topic is the dead-letter topic to redrive from.
	//
	// Required.
	Topic string

	// Filter selects the messages to move.
	//
	// Optional. Defaults to every message.
	Filter Filter

	// To says where the messages go.
	//
	// Optional. Defaults to ToOriginalTopic.
	To Destination

	// TargetTopic is the topic of ToTopic; it must exist.
	//
	// Required with ToTopic, empty otherwise.
	TargetTopic string

	// Name names the redrive's checkpoint: a consumer group of its own,
	// "retry-kafka.redrive.{Name}" after the backend's prefix, on the
	// dead-letter topic (never one of the application's). A redrive
	// starts after the messages its checkpoint has passed, so one that
	// was interrupted moves the rest when run again, and one that
	// finished moves only what came since. A new Name starts from the
	// beginning.
	//
	// Optional. Defaults to the destination ("original", "first-tier",
	// "topic.{TargetTopic}") plus ".filter-{hash of Filter}" when there is a
	// filter, so that a filtered redrive does not move the checkpoint of
	// an unfiltered one.
	Name string

	// MaxRedrives skips the messages that were redriven MaxRedrives
	// times already (tiered.KeyRedriveCount): they are counted and
	// reported, not moved, so that a message that keeps failing cannot
	// loop through the dead-letter topic forever.
	//
	// Optional. Defaults to [DefaultMaxRedrives] (3).
	MaxRedrives int

	// Max stops the redrive once it moved Max messages; the checkpoint
	// stops there, and the next run goes on from it.
	//
	// Optional. Defaults to 0: no limit.
	Max int64

	// Limiter paces the moves: one token per message.
	//
	// Optional. Defaults to none: as fast as the broker takes them.
	Limiter Limiter

	// DryRun reads and counts what would move, and moves nothing and
	// commits no checkpoint.
	//
	// Optional. Defaults to false.
	DryRun bool

	// OnProgress is called after each batch the broker confirmed (and
	// in a dry run every few thousand messages), from the goroutine of
	// Redrive.
	//
	// Optional. Defaults to none.
	OnProgress func(RedriveProgress)
}

func (p RedriveParams) withDefaults() RedriveParams {
	if p.MaxRedrives == 0 {
		p.MaxRedrives = DefaultMaxRedrives
	}
	if p.Name == "" {
		p.Name = p.To.String()
		if p.To == ToTopic {
			p.Name += "." + p.TargetTopic
		}
		if !p.Filter.IsZero() {
			p.Name += ".filter-" + p.Filter.hash()
		}
	}
	return p
}

// Validate reports every problem with p without changing it.
func (p RedriveParams) Validate() error {
	var errs []error
	if p.Topic == "" {
		errs = append(errs, errors.New("Topic is empty"))
	}
	switch p.To {
	case ToOriginalTopic, ToFirstTier:
		if p.TargetTopic != "" {
			errs = append(errs, fmt.Errorf("TargetTopic %q is set, but To is %s", p.TargetTopic, p.To))
		}
	case ToTopic:
		if p.TargetTopic == "" {
			errs = append(errs, errors.New("TargetTopic is empty, and To is ToTopic"))
		} else if p.TargetTopic == p.Topic {
			errs = append(errs, fmt.Errorf("TargetTopic is the dead-letter topic %q itself", p.Topic))
		}
	default:
		errs = append(errs, fmt.Errorf("To is %v, not a Destination", p.To))
	}
	if p.MaxRedrives < 0 {
		errs = append(errs, fmt.Errorf("MaxRedrives is %d, must be positive (0 means %d)", p.MaxRedrives, DefaultMaxRedrives))
	}
	if p.Max < 0 {
		errs = append(errs, fmt.Errorf("Max is %d, must not be negative (0 means no limit)", p.Max))
	}
	if err := p.Filter.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// RedriveProgress is how far a redrive got.
type RedriveProgress struct {
	// Scanned is how many messages were read; Total how many there were
	// to read when the redrive started (after its checkpoint).
	Scanned, Total int64
	// Moved is how many the broker confirmed at their destination (in a
	// dry run: would have moved); Skipped how many were selected but not
	// moved.
	Moved, Skipped int64
}

// Skip reasons, in RedriveResult.SkippedBy.
const (
	// SkipCapped: the message was redriven MaxRedrives times already.
	SkipCapped = "redrive cap reached"
	// SkipNoTopic: the message names no original topic (or handler, for
	// ToFirstTier) and the dead-letter topic's name tells none.
	SkipNoTopic = "no original topic"
	// SkipNoTier: the handler has no tier topic (ToFirstTier).
	SkipNoTier = "handler has no tier topic"
	// SkipUndecodable: a Redis entry that is not a Watermill message.
	SkipUndecodable = "not a Watermill message"
	// SkipStub: a dead-letter stub (tiered.DeadLetterStub), which stands
	// in for a copy too large to publish and carries no payload; its
	// origin keys say where the original can be fetched.
	SkipStub = "a stub without its payload"
)

// Skipped is one message a redrive selected and did not move.
type Skipped struct {
	// ID and UUID identify the message.
	ID   string `json:"id"`
	UUID string `json:"uuid"`
	// Why is one of the Skip reasons.
	Why string `json:"why"`
}

// RedriveResult is what a redrive did.
type RedriveResult struct {
	// Name is the checkpoint's name (see RedriveParams.Name).
	Name string `json:"name"`
	// Resumed is true when the redrive started after an earlier run's
	// checkpoint.
	Resumed bool `json:"resumed"`
	// DryRun is true when nothing was moved.
	DryRun bool `json:"dry_run"`
	// Scanned is how many messages were read, Selected how many the
	// filter selected, Moved how many the broker confirmed at their
	// destination (in a dry run: would have moved), Skipped how many were
	// selected and not moved.
	Scanned  int64 `json:"scanned"`
	Selected int64 `json:"selected"`
	Moved    int64 `json:"moved"`
	Skipped  int64 `json:"skipped"`
	// SkippedBy counts the skipped messages by reason (the Skip
	// constants).
	SkippedBy map[string]int64 `json:"skipped_by"`
	// SkippedExamples are the first skipped messages (at most 100).
	SkippedExamples []Skipped `json:"skipped_examples,omitempty"`
	// Targets counts the moved messages by destination topic.
	Targets map[string]int64 `json:"targets"`
	// Reasons counts the selected messages by normalised reason, most
	// frequent first (see [Stats]).
	Reasons []Count `json:"reasons"`
	// Interrupted is true when Max stopped the redrive before the end of
	// the selection.
	Interrupted bool `json:"interrupted"`
}

// Redrive moves the dead letters that p selects to their destination, in
// the order they are stored (Kafka: partition by partition), and returns
// what it did, also when it stops on an error.
//
// What moves is fixed when it starts: the messages up to the topic's end
// at that moment, so a redrive never chases messages that failed again
// meanwhile. Each moved message keeps its UUID, payload, record key (Kafka)
// and user metadata; its retry metadata (attempts, errors, due times,
// poison reason, origin) is cleared, so it starts a new life; its redrive
// count (tiered.KeyRedriveCount) goes up by one and its redrive time
// (tiered.KeyRedriveTime) is stamped. Messages over MaxRedrives are
// skipped and reported.
//
// Messages move in batches: a batch is published, and the checkpoint moves
// past it only once the broker confirmed every message of it. A redrive
// killed half-way therefore loses nothing and, run again with the same
// params, moves the rest; at most the batch in flight when it was killed
// moves twice. The dead-letter topic itself is not changed: purge what was
// redriven with [Client.Purge].
func (c *Client) Redrive(ctx context.Context, p RedriveParams) (*RedriveResult, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("invalid redrive: %w", err)
	}
	p = p.withDefaults()
	m, err := c.prepareScan(ctx, p.Topic, p.Filter)
	if err != nil {
		return nil, err
	}
	if err := c.isDeadLetterTopic(ctx, p.Topic); err != nil {
		return nil, err
	}
	if p.To == ToTopic {
		if err := c.d.exists(ctx, p.TargetTopic); err != nil {
			return nil, fmt.Errorf("redrive target: %w", err)
		}
	}
	r := &redrive{
		c: c, p: p, m: m,
		group: checkpointPrefix + p.Name,
		kafka: c.d.system() == "kafka",
		res: &RedriveResult{
			Name: p.Name, DryRun: p.DryRun,
			SkippedBy: map[string]int64{}, Targets: map[string]int64{},
		},
		stats:  newStatsAcc(p.Topic),
		tiers:  map[string]tierInfo{},
		mains:  map[string]string{},
		exists: map[string]error{},
	}
	return r.run(ctx)
}

// redrive is one run of [Client.Redrive].
type redrive struct {
	c     *Client
	p     RedriveParams
	m     *matcher
	group string
	kafka bool
	res   *RedriveResult
	stats *statsAcc
	total int64

	ctx            context.Context // of the run
	pos, committed position        // scanned up to, committed up to
	batch          []outgoing
	batchStart     time.Time
	lastCommit     time.Time
	taken          int64     // messages batched so far, for Max
	inflight       *inflight // the batch being published, if any

	tiers  map[string]tierInfo // by "{topic}.{handler}"
	mains  map[string]string   // dead-letter topic → main topic by its name
	exists map[string]error    // destination topic → whether it exists
}

// inflight is a batch being published while the scan goes on: at most
// one, so the broker's confirmation of a batch overlaps with reading the
// next one, and the checkpoint still only passes confirmed batches.
type inflight struct {
	done  chan error
	pos   position // the position after the batch
	batch []outgoing
}

type tierInfo struct {
	topic string
	ok    bool
}

var errMaxReached = errors.New("max reached")

func (r *redrive) run(ctx context.Context) (*RedriveResult, error) {
	start, resumed, err := r.c.d.checkpoint(ctx, r.p.Topic, r.group)
	if err != nil {
		return nil, err
	}
	r.res.Resumed = resumed
	r.pos, r.committed = start.clone(), start.clone()
	if r.total, err = r.c.backlog(ctx, r.p.Topic, r.group, resumed); err != nil {
		return nil, err
	}
	r.lastCommit = time.Now()
	r.ctx = ctx

	err = r.c.d.scan(ctx, r.p.Topic, scanOptions{from: start, since: r.p.Filter.From, until: r.p.Filter.To}, r.step)
	if errors.Is(err, errMaxReached) {
		r.res.Interrupted, err = true, nil
	}
	if err == nil {
		err = r.flush()
	}
	// Whatever ended the scan, settle the batch in flight: if the broker
	// took it, the checkpoint passes it.
	err = errors.Join(err, r.settle())
	r.res.Reasons = r.stats.result().Reasons
	if err != nil {
		return r.res, err
	}
	return r.res, nil
}

// step handles one scanned message.
func (r *redrive) step(msg *Message) error {
	if !r.m.match(msg) {
		r.res.Scanned++
		r.pos.advance(msg, r.kafka)
		return r.maybeFlush()
	}
	if r.p.Max > 0 && r.taken >= r.p.Max {
		return errMaxReached // before msg: the checkpoint stops in front of it
	}
	r.res.Scanned++
	r.res.Selected++
	r.stats.add(msg)
	r.pos.advance(msg, r.kafka)
	out, why, err := r.redriven(msg)
	if err != nil {
		return err
	}
	if why != "" {
		r.res.Skipped++
		r.res.SkippedBy[why]++
		if len(r.res.SkippedExamples) < maxExamples {
			r.res.SkippedExamples = append(r.res.SkippedExamples, Skipped{ID: msg.ID, UUID: msg.UUID, Why: why})
		}
		return r.maybeFlush()
	}
	if r.p.Limiter != nil && !r.p.DryRun {
		if err := r.p.Limiter.WaitN(r.ctx, 1); err != nil {
			return err
		}
	}
	if len(r.batch) == 0 {
		r.batchStart = time.Now()
	}
	r.batch = append(r.batch, out)
	r.taken++
	return r.maybeFlush()
}

// maybeFlush publishes the batch when it is full or old, or commits the
// position when nothing was batched for a while.
func (r *redrive) maybeFlush() error {
	switch {
	case len(r.batch) >= redriveBatch:
	case len(r.batch) > 0 && time.Since(r.batchStart) >= flushEvery:
	case len(r.batch) == 0 && time.Since(r.lastCommit) >= flushEvery:
	case r.p.DryRun && r.res.Scanned%redriveBatch == 0:
	default:
		return nil
	}
	return r.flush()
}

// flush settles the batch in flight, then starts publishing the batch
// (its position is committed once the broker confirmed it), or, with no
// batch, commits the position (past messages not selected or skipped).
func (r *redrive) flush() error {
	if err := r.settle(); err != nil {
		return err
	}
	r.lastCommit = time.Now()
	if len(r.batch) > 0 && !r.p.DryRun {
		f := &inflight{done: make(chan error, 1), pos: r.pos.clone(), batch: r.batch}
		r.batch = nil
		// The batch is published, and its position committed, even when
		// ctx ends meanwhile: an interrupted redrive finishes the batch
		// it started rather than leave it moved and not checkpointed.
		go func() { f.done <- r.c.d.publish(context.WithoutCancel(r.ctx), f.batch) }()
		r.inflight = f
		return nil
	}
	if len(r.batch) > 0 { // a dry run
		r.count(r.batch)
		r.batch = r.batch[:0]
	}
	if err := r.commit(r.pos); err != nil {
		return err
	}
	r.progress()
	return nil
}

// settle waits for the batch in flight and commits the position after it.
func (r *redrive) settle() error {
	f := r.inflight
	if f == nil {
		return nil
	}
	r.inflight = nil
	if err := <-f.done; err != nil {
		return fmt.Errorf("redrive: publish %d messages: %w", len(f.batch), err)
	}
	r.count(f.batch)
	if err := r.commit(f.pos); err != nil {
		return err
	}
	r.progress()
	return nil
}

// count counts batch as moved.
func (r *redrive) count(batch []outgoing) {
	for _, o := range batch {
		r.res.Targets[o.topic]++
	}
	r.res.Moved += int64(len(batch))
}

// commit stores pos as the checkpoint (not in a dry run).
func (r *redrive) commit(pos position) error {
	if r.p.DryRun || pos.equal(r.committed) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), commitTimeout)
	defer cancel()
	if err := r.c.d.commit(ctx, r.p.Topic, r.group, pos); err != nil {
		return fmt.Errorf("redrive: moved %d messages, but the checkpoint failed (a new run moves them again): %w", r.res.Moved, err)
	}
	r.committed = pos.clone()
	return nil
}

func (r *redrive) progress() {
	if r.p.OnProgress != nil {
		r.p.OnProgress(RedriveProgress{Scanned: r.res.Scanned, Total: max(r.total, r.res.Scanned), Moved: r.res.Moved, Skipped: r.res.Skipped})
	}
}

// redriven returns msg as it goes to its destination, or why it does
// not go.
func (r *redrive) redriven(msg *Message) (outgoing, string, error) {
	if msg.Raw != nil {
		return outgoing{}, SkipUndecodable, nil
	}
	if _, stub := msg.Metadata[tiered.KeyPayloadDropped]; stub {
		return outgoing{}, SkipStub, nil
	}
	if msg.Redrives() >= r.p.MaxRedrives {
		return outgoing{}, SkipCapped, nil
	}
	now := time.Now()
	// The scan made msg for this redrive alone: its metadata becomes the
	// moved message's, without a copy.
	md := msg.Metadata
	redrives, main, handler := msg.Redrives(), msg.OriginalTopic(), msg.Handler()
	tiered.ClearInfo(md)
	tiered.ClearOrigin(md)
	delete(md, redisstream.KeyEntryID)
	md.Set(tiered.KeyRedriveCount, strconv.Itoa(redrives+1))
	md.Set(tiered.KeyRedriveTime, strconv.FormatInt(now.UnixMilli(), 10))

	var topic string
	switch r.p.To {
	case ToTopic:
		topic = r.p.TargetTopic
	case ToOriginalTopic:
		topic = main
		if topic == "" {
			var err error
			if topic, err = r.mainOf(); err != nil {
				return outgoing{}, "", err
			}
		}
		if topic == "" {
			return outgoing{}, SkipNoTopic, nil
		}
	case ToFirstTier:
		if main == "" || handler == "" {
			return outgoing{}, SkipNoTopic, nil
		}
		tier, err := r.firstTier(main, handler)
		if err != nil {
			return outgoing{}, "", err
		}
		if tier == "" {
			return outgoing{}, SkipNoTier, nil
		}
		topic = tier
		// A first retry, due at once: what the retry middleware
		// writes after a first failure.
		tiered.Info{
			Attempt: 1, OriginalTopic: main, Handler: handler,
			FirstFailure: now, LastFailure: now, Tier: 1,
			LastError: "redriven from " + r.p.Topic,
		}.Write(md)
		md.Set(tiered.KeyDueAt, strconv.FormatInt(now.UnixMilli(), 10))
		md.Set(delay.DelayedForKey, "0s")
		md.Set(delay.DelayedUntilKey, now.UTC().Format(time.RFC3339))
	}
	if err := r.destinationExists(topic); err != nil {
		return outgoing{}, "", err
	}
	out := &Message{ID: msg.ID, UUID: msg.UUID, Key: msg.Key, Payload: msg.Payload, Metadata: md, Foreign: msg.Foreign}
	return outgoing{topic: topic, msg: out}, "", nil
}

// destinationExists checks, once per topic, that a destination exists:
// a redrive never creates a topic by a typo or a stale name.
func (r *redrive) destinationExists(topic string) error {
	err, seen := r.exists[topic]
	if !seen {
		err = r.c.d.exists(r.ctx, topic)
		r.exists[topic] = err
	}
	if err != nil {
		return fmt.Errorf("redrive destination: %w", err)
	}
	return nil
}

// mainOf is the main topic of the dead-letter topic by its name, for
// messages that do not name theirs; "" when the name tells none.
func (r *redrive) mainOf() (string, error) {
	if main, ok := r.mains[r.p.Topic]; ok {
		return main, nil
	}
	q, ok := parseQueueName(r.p.Topic)
	main := ""
	if ok && q.dlq {
		names, err := r.c.d.ListTopics(r.ctx, "")
		if err != nil {
			return "", err
		}
		exists := map[string]bool{}
		for _, n := range names {
			exists[n] = true
		}
		if t, _ := splitBase(q.base, nil, exists); exists[t] {
			main = t
		}
	}
	r.mains[r.p.Topic] = main
	return main, nil
}

func (r *redrive) firstTier(main, handler string) (string, error) {
	key := main + "." + handler
	if t, ok := r.tiers[key]; ok {
		return t.topic, nil
	}
	topic, _, ok, err := r.c.firstTier(r.ctx, main, handler)
	if err != nil {
		return "", err
	}
	r.tiers[key] = tierInfo{topic: topic, ok: ok}
	return topic, nil
}

// Backlog returns how many messages a redrive with p would read: those of
// p.Topic after its checkpoint (all of them on a first run), before the
// filter selects. It reads no message: on Kafka it is offsets, on Redis
// the checkpoint group's lag (which Redis may have to count).
func (c *Client) Backlog(ctx context.Context, p RedriveParams) (int64, error) {
	if err := c.check(p.Topic); err != nil {
		return 0, err
	}
	if err := p.Validate(); err != nil {
		return 0, fmt.Errorf("invalid redrive: %w", err)
	}
	p = p.withDefaults()
	group := checkpointPrefix + p.Name
	_, resumed, err := c.d.checkpoint(ctx, p.Topic, group)
	if err != nil {
		return 0, err
	}
	return c.backlog(ctx, p.Topic, group, resumed)
}

func (c *Client) backlog(ctx context.Context, topic, group string, resumed bool) (int64, error) {
	if resumed {
		return c.d.Lag(ctx, topic, group)
	}
	d, err := c.Depth(ctx, topic)
	return d.Messages, err
}
