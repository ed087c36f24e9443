package main

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The drill is only worth its figures if it catches what it claims to
// catch: these tests feed analyze the evidence of each failure and check
// that it is counted, and that a clean run counts nothing.

// at is ms milliseconds after the start of a test's story, in the form the
// journal reads times back (time.Unix).
func at(ms int) time.Time { return time.UnixMilli(1_767_323_045_000 + int64(ms)) }

// handled is a handling from ms to ms (instant).
func handled(uuid string, attempt, tier int, st step, ms int, dueMs int) handling {
	h := handling{UUID: uuid, Attempt: attempt, Tier: tier, Step: st, Start: at(ms), End: at(ms), PID: 1}
	if dueMs != 0 {
		h.Due = at(dueMs)
	}
	return h
}

func baseEvidence() evidence {
	return evidence{
		Plans:       map[string]plan{},
		Republished: map[string]bool{},
		DeadLetters: map[string]int{},
		Delays:      []time.Duration{time.Second, 2 * time.Second},
		MaxAttempts: 3,
		Drained:     true,
		DrainedAt:   at(60_000),
	}
}

func TestAnalyze_cleanRunCountsNothing(t *testing.T) {
	ev := baseEvidence()
	ev.Plans["ok"] = plan{}
	ev.Plans["once"] = plan{Fail: 1}
	ev.Plans["dead"] = plan{Fail: 3}
	ev.Handlings = []handling{
		handled("ok", 1, 0, stepOK, 0, 0),
		handled("once", 1, 0, stepFail, 0, 0),
		handled("once", 2, 1, stepOK, 1000, 1000),
		handled("dead", 1, 0, stepFail, 0, 0),
		handled("dead", 2, 1, stepFail, 1000, 1000),
		handled("dead", 3, 2, stepFail, 3000, 3000),
	}
	ev.DeadLetters["dead"] = 1
	r := analyze(ev)
	require.True(t, r.ok(), "%+v", r)
	require.Equal(t, result{
		Messages: 3, ExpectedOK: 2, ExpectedDead: 1, Handlings: 6,
		DupPerFault: []int{}, Examples: map[string][]string{},
	}, r)
}

func TestAnalyze_countsEachFailure(t *testing.T) {
	tests := map[string]struct {
		plans     map[string]plan
		handlings []handling
		dead      map[string]int
		want      func(r result) int
	}{
		"lost success": {
			plans: map[string]plan{"a": {Fail: 1}},
			handlings: []handling{
				handled("a", 1, 0, stepFail, 0, 0),
			},
			want: func(r result) int { return r.Lost },
		},
		"lost dead letter": {
			plans: map[string]plan{"a": {Permanent: 1}},
			handlings: []handling{
				handled("a", 1, 0, stepPermanent, 0, 0),
			},
			want: func(r result) int { return r.Lost },
		},
		"wrongly dead-lettered": {
			plans: map[string]plan{"a": {Fail: 1}},
			handlings: []handling{
				handled("a", 1, 0, stepFail, 0, 0),
			},
			dead: map[string]int{"a": 1},
			want: func(r result) int { return r.WronglyDead },
		},
		"success planned to dead-letter": {
			plans:     map[string]plan{"a": {Permanent: 1}},
			handlings: []handling{handled("a", 1, 0, stepOK, 0, 0)},
			dead:      map[string]int{"a": 1},
			want:      func(r result) int { return r.UnexpectedOK },
		},
		"early against the due time carried": {
			plans: map[string]plan{"a": {Fail: 1}},
			handlings: []handling{
				handled("a", 1, 0, stepFail, 0, 0),
				handled("a", 2, 1, stepOK, 1500, 1501),
			},
			want: func(r result) int { return r.EarlyStamped },
		},
		"early against the failure before": {
			// The stamp says 900ms: the library stamped it wrong, or the
			// clamp shortened it; the tier's delay is 1s.
			plans: map[string]plan{"a": {Fail: 1}},
			handlings: []handling{
				handled("a", 1, 0, stepFail, 0, 0),
				handled("a", 2, 1, stepOK, 998, 900),
			},
			want: func(r result) int { return r.EarlyAfterFail },
		},
		"early against the earliest of duplicate failures": {
			plans: map[string]plan{"a": {Fail: 2}},
			handlings: []handling{
				handled("a", 1, 0, stepFail, 0, 0),
				handled("a", 2, 1, stepFail, 1000, 1000),
				handled("a", 2, 1, stepFail, 1500, 1500), // duplicate
				handled("a", 3, 2, stepOK, 2900, 2900),   // 1.9s after the first failure of attempt 2
			},
			want: func(r result) int { return r.EarlyAfterFail },
		},
		"tier attempt without a failure before it": {
			plans: map[string]plan{"a": {Fail: 1}},
			handlings: []handling{
				handled("a", 2, 1, stepOK, 1000, 1000),
			},
			want: func(r result) int { return r.Orphans },
		},
		"unknown message": {
			plans:     map[string]plan{"a": {}},
			handlings: []handling{handled("a", 1, 0, stepOK, 0, 0), handled("b", 1, 0, stepOK, 0, 0)},
			want:      func(r result) int { return r.Unknown },
		},
		"unreadable retry metadata": {
			plans:     map[string]plan{"a": {}},
			handlings: []handling{handled("a", 1, 0, stepOK, 0, 0), handled("a", -1, 1, stepPermanent, 10, 0)},
			want:      func(r result) int { return r.BadInfo },
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			ev := baseEvidence()
			ev.Plans = tt.plans
			ev.Handlings = tt.handlings
			if tt.dead != nil {
				ev.DeadLetters = tt.dead
			}
			r := analyze(ev)
			require.Equal(t, 1, tt.want(r), "%+v", r)
			require.False(t, r.ok())
		})
	}
}

func TestAnalyze_notDrainedFails(t *testing.T) {
	ev := baseEvidence()
	ev.Plans["a"] = plan{}
	ev.Handlings = []handling{handled("a", 1, 0, stepOK, 0, 0)}
	ev.Drained = false
	require.False(t, analyze(ev).ok())
}

func TestAnalyze_notEarlyWithinTheBrokersMillisecond(t *testing.T) {
	ev := baseEvidence()
	ev.Plans["a"] = plan{Fail: 1}
	ev.Handlings = []handling{
		{UUID: "a", Attempt: 1, Step: stepFail, Start: at(0), End: at(0).Add(700 * time.Microsecond)},
		// Due clamped to the broker's append time, truncated to the
		// millisecond, + 1s.
		{UUID: "a", Attempt: 2, Tier: 1, Step: stepOK, Start: at(1000), End: at(1000), Due: at(1000)},
	}
	r := analyze(ev)
	require.True(t, r.ok(), "%+v", r)
}

func TestAnalyze_putsDuplicatesDownToTheirFault(t *testing.T) {
	ev := baseEvidence()
	for _, id := range []string{"a", "b", "c", "g", "r"} {
		ev.Plans[id] = plan{}
	}
	ev.Republished["r"] = true
	ev.Faults = []fault{
		{Kind: consumerKill, At: at(100), End: at(100)},
		// Down from 1s to 5s: a message handled at 2s from a buffer and
		// again at 6s is the restart's.
		{Kind: brokerRestart, At: at(1000), End: at(5000)},
	}
	ev.Handlings = []handling{
		handled("a", 1, 0, stepOK, 50, 0),
		handled("a", 1, 0, stepOK, 200, 0), // after the kill
		handled("b", 1, 0, stepOK, 2000, 0),
		handled("b", 1, 0, stepOK, 6000, 0), // after the restart
		handled("b", 1, 0, stepOK, 7000, 0), // again after the restart
		handled("c", 1, 0, stepOK, 6000, 0),
		handled("c", 1, 0, stepOK, 7000, 0), // no fault between
		handled("g", 1, 0, stepOK, 60, 0),
		handled("g", 1, 0, stepOK, 6000, 0), // the kill, then the restart: the kill's
		handled("r", 1, 0, stepOK, 0, 0),
		handled("r", 1, 0, stepOK, 300, 0), // the producer's duplicate
	}
	// A failure handled twice across the kill publishes two copies: both
	// are handled, after the kill, with no fault between them.
	ev.Plans["f"] = plan{Fail: 1}
	ev.Handlings = append(ev.Handlings,
		handled("f", 1, 0, stepFail, 50, 0),
		handled("f", 1, 0, stepFail, 200, 0),
		handled("f", 2, 1, stepOK, 8000, 7900),
		handled("f", 2, 1, stepOK, 8200, 8100),
	)
	r := analyze(ev)
	require.True(t, r.ok(), "%+v", r)
	require.Equal(t, 7, r.DupHandlings)
	require.Equal(t, 4, r.DupAfterKill)
	require.Equal(t, 1, r.DupCascaded)
	require.Equal(t, 2, r.DupAfterRestart)
	require.Equal(t, 1, r.DupNoFault)
	require.Equal(t, 4, r.MaxDupPerKill)
	require.Equal(t, 2, r.MaxDupPerRestart)
	require.Equal(t, 6, r.DupSuccesses)
	require.Equal(t, 1, r.ProducerDups)
	require.Equal(t, []int{4, 2}, r.DupPerFault)
	require.Equal(t, 55*time.Second, r.DrainAfterLast, "from the broker's return")
}

func TestAnalyze_countsDuplicateDeadLetters(t *testing.T) {
	ev := baseEvidence()
	ev.Plans["a"] = plan{Permanent: 1}
	ev.Handlings = []handling{handled("a", 1, 0, stepPermanent, 0, 0)}
	ev.DeadLetters["a"] = 3
	r := analyze(ev)
	require.True(t, r.ok())
	require.Equal(t, 2, r.DupDeadLetters)
}

func TestPlan_expect(t *testing.T) {
	tests := []struct {
		p    plan
		want outcome
	}{
		{plan{}, succeeds},
		{plan{Fail: 1}, succeeds},
		{plan{Fail: 3}, succeeds}, // succeeds at attempt 4, the last
		{plan{Fail: 4}, deadLettered},
		{plan{Permanent: 1}, deadLettered},
		{plan{Fail: 4, Permanent: 3}, deadLettered},
		{plan{Fail: 1, Permanent: 3}, succeeds}, // succeeds at 2, before the permanent failure
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, tt.p.expect(4), "%+v", tt.p)
	}
}

func TestMix_coversEveryOutcome(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[plan]int{}
	for range 2000 {
		seen[mix(r, 4)]++
	}
	for _, p := range []plan{{}, {Fail: 1}, {Fail: 2}, {Fail: 3}, {Fail: 4}, {Permanent: 1}, {Fail: 4, Permanent: 2}, {Fail: 4, Permanent: 3}} {
		require.Positive(t, seen[p], "%+v never drawn", p)
	}
}

func TestJournal_aTornRecordIsNotCounted(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir)
	require.NoError(t, err)
	h := handled("a", 1, 0, stepOK, 5, 0)
	h.PID = os.Getpid()
	require.NoError(t, j.write(h))
	require.NoError(t, j.close())

	r := newJournalReader(dir)
	got, err := r.read()
	require.NoError(t, err)
	require.Equal(t, []handling{h}, got)

	// A process killed in the middle of a write leaves half a line.
	other := journalName(dir, 99999)
	require.NoError(t, os.WriteFile(other, []byte("h b 1 0 ok 1 1 0 99999\nh c 1 0 o"), 0o644))
	got, err = r.read()
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, "b", got[0].UUID)
	require.Equal(t, 1, r.torn())

	// Only new lines are read again.
	got, err = r.read()
	require.NoError(t, err)
	require.Empty(t, got)
	require.Len(t, mustGlob(t, filepath.Join(dir, "handled.*.log")), 2)
}

func mustGlob(t *testing.T, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	require.NoError(t, err)
	return m
}
