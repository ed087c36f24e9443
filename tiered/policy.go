package tiered

import (
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v4"
)

// Policy says how often a failed message is tried again and how long each
// try waits. It is plain data. The zero value is invalid ([Policy.Validate]
// rejects it): a policy either has Delays, or says MaxAttempts: 1 (no
// retries, every failure is dead-lettered).
//
// Attempts are counted across the whole life of a message: attempt 1 is the
// delivery from the handler's own topic, attempt n (n >= 2) is the delivery
// from tier n-1. When attempts outnumber tiers, the last tier repeats. After
// attempt MaxAttempts fails, the message goes to the dead-letter topic.
type Policy struct {
	// Delays is the delay of each tier, in order. A message that failed
	// attempt n waits Delays[n-1] (or the last delay, when n > len(Delays)).
	// Each delay must be positive, and no two delays may give the same
	// topic name.
	//
	// Required when MaxAttempts > 1.
	Delays []time.Duration

	// MaxAttempts is the number of times the handler sees a message, the
	// first delivery included. 1 means no retries: a failure goes straight
	// to the dead-letter topic.
	//
	// Optional. Defaults to len(Delays)+1 (each tier once).
	MaxAttempts int

	// Quick makes the handler try a message again in process, right away,
	// before it goes to the first tier. Quick attempts do not count toward
	// MaxAttempts and only happen on the handler's own topic.
	//
	// Optional. Defaults to no quick attempts.
	Quick Quick

	// Classify decides, for an error that is not [Permanent], whether the
	// message is retried or dead-lettered. Permanent errors always go to the
	// dead-letter topic.
	//
	// Optional. Defaults to retrying every error that is not permanent.
	Classify func(ClassifyParams) Decision
}

// Quick configures in-process attempts before the first tier. They suit
// blips of a few milliseconds; anything longer belongs in a tier, because a
// quick attempt holds the message's partition or stream while it waits.
type Quick struct {
	// Attempts is the number of extra in-process attempts.
	//
	// Optional. Defaults to 0 (none).
	Attempts int

	// BackOff returns a fresh back-off for one message; its NextBackOff
	// gives the wait before each quick attempt. It is called once per
	// failing message, so it may return a stateful value. A back-off that
	// returns backoff.Stop ends the quick attempts early.
	//
	// Optional. Defaults to an exponential back-off starting at 10ms and
	// capped at 500ms.
	BackOff func() backoff.BackOff
}

// Decision is what happens to a message whose handler failed.
type Decision int

const (
	// Retry sends the message to its next tier, or to the dead-letter
	// topic when it has no attempts left.
	Retry Decision = iota
	// DeadLetter sends the message straight to the dead-letter topic.
	DeadLetter
)

// String returns "retry" or "dead-letter".
func (d Decision) String() string {
	switch d {
	case Retry:
		return "retry"
	case DeadLetter:
		return "dead-letter"
	default:
		return fmt.Sprintf("Decision(%d)", int(d))
	}
}

// ClassifyParams is what [Policy.Classify] decides on.
type ClassifyParams struct {
	// Err is the handler's error.
	Err error
	// Message is the message that failed. Read it, do not change it.
	Message *message.Message
	// Attempt is the number of the attempt that just failed (1 for the
	// delivery from the handler's own topic).
	Attempt int
}

// setDefaults fills the optional fields.
func (p *Policy) setDefaults() {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = len(p.Delays) + 1
	}
	if p.Quick.Attempts > 0 && p.Quick.BackOff == nil {
		p.Quick.BackOff = defaultQuickBackOff
	}
}

func defaultQuickBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 10 * time.Millisecond
	b.MaxInterval = 500 * time.Millisecond
	b.MaxElapsedTime = 0 // the attempt count ends quick attempts, not time
	b.Reset()
	return b
}

// WithDefaults returns a copy of p with its optional fields filled in.
func (p Policy) WithDefaults() Policy {
	p.Delays = append([]time.Duration(nil), p.Delays...)
	p.setDefaults()
	return p
}

// Validate reports every problem with p, as if its defaults were applied.
// It does not change p. Each error wraps [ErrInvalidPolicy].
func (p Policy) Validate() error {
	var errs []error
	if p.MaxAttempts == 0 && len(p.Delays) == 0 {
		errs = append(errs, fmt.Errorf("%w: the zero Policy retries nothing: give Delays (one per tier), or set MaxAttempts to 1 to dead-letter every failure", ErrInvalidPolicy))
	}
	p = p.WithDefaults()
	if p.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("%w: MaxAttempts is %d, must be at least 1", ErrInvalidPolicy, p.MaxAttempts))
	}
	if p.MaxAttempts > 1 && len(p.Delays) == 0 {
		errs = append(errs, fmt.Errorf("%w: MaxAttempts is %d but Delays is empty: give at least one tier delay, or set MaxAttempts to 1 for no retries", ErrInvalidPolicy, p.MaxAttempts))
	}
	for i, d := range p.Delays {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%w: Delays[%d] is %v, must be positive", ErrInvalidPolicy, i, d))
		}
		for j := range i {
			if p.Delays[j] == d && d > 0 {
				errs = append(errs, fmt.Errorf("%w: Delays[%d] and Delays[%d] are both %v, so both tiers would be the topic %q: give each tier its own delay (when attempts outnumber tiers, the last tier repeats by itself)",
					ErrInvalidPolicy, j, i, d, DefaultTopicName(TopicParams{Topic: "{topic}", Handler: "{handler}", Delay: d})))
				break
			}
		}
	}
	if p.Quick.Attempts < 0 {
		errs = append(errs, fmt.Errorf("%w: Quick.Attempts is %d, must not be negative", ErrInvalidPolicy, p.Quick.Attempts))
	}
	return errors.Join(errs...)
}

// Tiers returns the number of tiers that attempts can reach: the tiers
// beyond it are never used because MaxAttempts runs out first.
func (p Policy) Tiers() int {
	p = p.WithDefaults()
	return min(len(p.Delays), max(p.MaxAttempts-1, 0))
}

// TierFor returns the tier (numbered from 1, as in [KeyTier]; its topic is
// Topics.Tiers[tier-1]) that a message enters after attempt failed, and
// false when no attempts are left.
func (p Policy) TierFor(attempt int) (int, bool) {
	maxAttempts := p.MaxAttempts // the default, without copying Delays as WithDefaults does
	if maxAttempts == 0 {
		maxAttempts = len(p.Delays) + 1
	}
	if attempt >= maxAttempts || len(p.Delays) == 0 {
		return 0, false
	}
	return min(max(attempt, 1), len(p.Delays)), true
}

// decide applies the permanent marker and the classifier.
func (p Policy) decide(params ClassifyParams) Decision {
	if IsPermanent(params.Err) {
		return DeadLetter
	}
	if p.Classify == nil {
		return Retry
	}
	return p.Classify(params)
}

// Decide returns what happens to a message whose attempt failed with err:
// [DeadLetter] for a [Permanent] error or when the classifier says so,
// [Retry] otherwise. A Retry of the last attempt still goes to the
// dead-letter topic; see [Policy.TierFor].
func (p Policy) Decide(params ClassifyParams) Decision { return p.decide(params) }

// DelaysFromBackOff lists n tier delays taken from b, which is Reset first.
// Use it to build Policy.Delays from an exponential back-off. Delays that
// round to the same millisecond as the one before are dropped, since two
// tiers with one delay would share a topic. A back-off that returns
// backoff.Stop before n delays ends the list early; one that yields no
// positive delay gives an error.
//
// Note that backoff.ExponentialBackOff stops after MaxElapsedTime (15
// minutes by default), counted in wall time from Reset, not from the delays
// it returned: set MaxElapsedTime to 0 for long tier lists.
func DelaysFromBackOff(b backoff.BackOff, n int) ([]time.Duration, error) {
	if b == nil {
		return nil, fmt.Errorf("%w: nil back-off", ErrInvalidPolicy)
	}
	if n < 1 {
		return nil, fmt.Errorf("%w: asked for %d delays, need at least 1", ErrInvalidPolicy, n)
	}
	b.Reset()
	var delays []time.Duration
	for range n {
		d := b.NextBackOff()
		if d == backoff.Stop {
			break
		}
		d = d.Round(time.Millisecond)
		if d <= 0 || (len(delays) > 0 && d == delays[len(delays)-1]) {
			continue
		}
		delays = append(delays, d)
	}
	if len(delays) == 0 {
		return nil, fmt.Errorf("%w: the back-off gave no positive delay", ErrInvalidPolicy)
	}
	return delays, nil
}
