package main

import (
	"fmt"
	"math/rand/v2"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Metadata keys of a drill message's plan: what the handler does with it on
// each attempt. The plan travels with the message through every tier, so
// the handler decides from the message alone, the same way on a duplicate.
const (
	// metaFail is how many attempts fail with a retryable error: attempts
	// 1..n fail, attempt n+1 succeeds (if attempts are left).
	metaFail = "drill_fail_attempts"
	// metaPermanent is the attempt that fails with a permanent error; "0"
	// or absent: none.
	metaPermanent = "drill_permanent_at"
)

// plan is what happens to one message.
type plan struct {
	// Fail is the number of attempts that fail with a retryable error.
	Fail int
	// Permanent is the attempt that fails permanently, 0 for none.
	Permanent int
}

// outcome is what a plan ends in.
type outcome int

const (
	succeeds outcome = iota + 1
	deadLettered
)

func (o outcome) String() string {
	switch o {
	case succeeds:
		return "succeeds"
	case deadLettered:
		return "dead-lettered"
	}
	return "?"
}

// step is what the handler does on one attempt.
type step int

const (
	stepOK step = iota + 1
	stepFail
	stepPermanent
)

// String is the step's word in the handled log.
func (s step) String() string {
	switch s {
	case stepOK:
		return "ok"
	case stepFail:
		return "fail"
	case stepPermanent:
		return "perm"
	}
	return "?"
}

// parseStep reads a step's word.
func parseStep(s string) (step, bool) {
	for _, st := range []step{stepOK, stepFail, stepPermanent} {
		if st.String() == s {
			return st, true
		}
	}
	return 0, false
}

// at returns what the handler does on attempt (1-based).
func (p plan) at(attempt int) step {
	if p.Permanent > 0 && attempt >= p.Permanent {
		return stepPermanent
	}
	if attempt <= p.Fail {
		return stepFail
	}
	return stepOK
}

// expect returns how the plan ends under maxAttempts.
func (p plan) expect(maxAttempts int) outcome {
	for a := 1; a <= maxAttempts; a++ {
		switch p.at(a) {
		case stepOK:
			return succeeds
		case stepPermanent:
			return deadLettered
		}
	}
	return deadLettered
}

func (p plan) write(md message.Metadata) {
	md.Set(metaFail, strconv.Itoa(p.Fail))
	md.Set(metaPermanent, strconv.Itoa(p.Permanent))
}

func readPlan(md message.Metadata) (plan, error) {
	var p plan
	var err error
	if p.Fail, err = strconv.Atoi(md.Get(metaFail)); err != nil {
		return plan{}, fmt.Errorf("%s=%q: %w", metaFail, md.Get(metaFail), err)
	}
	if p.Permanent, err = strconv.Atoi(md.Get(metaPermanent)); err != nil {
		return plan{}, fmt.Errorf("%s=%q: %w", metaPermanent, md.Get(metaPermanent), err)
	}
	return p, nil
}

// mix draws the drill's failure mix, for a policy of maxAttempts attempts:
//
//	55%  succeed at once
//	15%  fail once, then succeed (tier 1)
//	10%  fail twice, then succeed (tier 2)
//	 5%  fail on every attempt but the last, then succeed
//	 5%  fail on every attempt (dead-lettered after the last)
//	 5%  fail permanently at once (dead-lettered from the main topic)
//	 5%  fail, then fail permanently at attempt 2 or 3
func mix(r *rand.Rand, maxAttempts int) plan {
	switch n := r.IntN(100); {
	case n < 55:
		return plan{}
	case n < 70:
		return plan{Fail: 1}
	case n < 80:
		return plan{Fail: 2}
	case n < 85:
		return plan{Fail: maxAttempts - 1}
	case n < 90:
		return plan{Fail: maxAttempts}
	case n < 95:
		return plan{Permanent: 1}
	default:
		return plan{Fail: maxAttempts, Permanent: 2 + r.IntN(2)}
	}
}
