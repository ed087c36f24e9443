package main

import (
	"slices"
	"sort"
	"time"
)

// faultKind is what the drill did to the system.
type faultKind string

const (
	consumerKill  faultKind = "consumer kill"
	brokerRestart faultKind = "broker restart"
)

// fault is one fault the drill injected.
type fault struct {
	Kind   faultKind
	At     time.Time // when the kill was sent
	End    time.Time // when what was killed was back (the broker answering; a consumer: At)
	Detail string
}

// evidence is everything a drill observed, for [analyze].
type evidence struct {
	Plans       map[string]plan // by message UUID: what was published
	Republished map[string]bool // UUIDs whose publish was retried (a producer duplicate is possible)
	Handlings   []handling      // every journaled handling
	DeadLetters map[string]int  // records per UUID read from the dead-letter topic
	Faults      []fault         // in order
	Delays      []time.Duration // the policy's tier delays
	MaxAttempts int             // the policy's MaxAttempts
	Drained     bool            // every outcome reached and every group caught up
	DrainedAt   time.Time       // when the drill saw it
	Torn        int             // journals ending in a torn record
}

// result is what a drill reports. The first block must be zero.
type result struct {
	Lost           int  `json:"lost"`             // no success and no dead letter where one was due
	WronglyDead    int  `json:"wrongly_dead"`     // dead-lettered although its plan succeeds
	UnexpectedOK   int  `json:"unexpected_ok"`    // succeeded although its plan dead-letters
	EarlyStamped   int  `json:"early_stamped"`    // handled before the due time it carried
	EarlyAfterFail int  `json:"early_after_fail"` // handled sooner than the tier's delay after the failure before
	Orphans        int  `json:"orphans"`          // a tier attempt with no journaled failure before it
	BadInfo        int  `json:"bad_info"`         // tier messages whose retry metadata was unreadable
	Unknown        int  `json:"unknown"`          // handled or dead-lettered UUIDs that were never published
	NotDrained     bool `json:"not_drained"`

	Messages         int           `json:"messages"`
	ExpectedOK       int           `json:"expected_ok"`
	ExpectedDead     int           `json:"expected_dead"`
	Handlings        int           `json:"handlings"`
	DupHandlings     int           `json:"duplicate_handlings"`    // handlings of a (UUID, attempt) after its first
	DupSuccesses     int           `json:"duplicate_successes"`    // successes of a UUID after its first
	DupDeadLetters   int           `json:"duplicate_dead_letters"` // dead-letter records of a UUID after its first
	ProducerDups     int           `json:"producer_dup_handlings"` // duplicate handlings of republished UUIDs, which a producer duplicate explains (left out of the counts above)
	Republished      int           `json:"republished"`
	Kills            int           `json:"consumer_kills"`
	Restarts         int           `json:"broker_restarts"`
	DupAfterKill     int           `json:"dup_after_kill"`    // duplicates whose first handling preceded a consumer kill
	DupAfterRestart  int           `json:"dup_after_restart"` // ... a broker restart
	DupNoFault       int           `json:"dup_no_fault"`      // duplicates with no fault between the first handling and them
	DupCascaded      int           `json:"dup_cascaded"`      // of those put down to a fault: a second copy handled after a duplicate of the attempt before
	MaxDupPerKill    int           `json:"max_dup_per_kill"`
	MaxDupPerRestart int           `json:"max_dup_per_restart"`
	DrainAfterLast   time.Duration `json:"drain_after_last_fault_ns"`
	LatenessP50      time.Duration `json:"lateness_p50_ns"`
	LatenessP99      time.Duration `json:"lateness_p99_ns"`
	LatenessMax      time.Duration `json:"lateness_max_ns"`
	Torn             int           `json:"torn_records"`

	// DupPerFault is the duplicates put down to each fault, in order.
	DupPerFault []int `json:"duplicates_per_fault"`

	// Examples of each failure, a few UUIDs, for a human to follow.
	Examples map[string][]string `json:"examples,omitempty"`
}

// ok reports whether the drill met its targets: nothing lost, nothing
// wrongly dead-lettered, nothing early, and drained.
func (r result) ok() bool {
	return r.Lost == 0 && r.WronglyDead == 0 && r.UnexpectedOK == 0 &&
		r.EarlyStamped == 0 && r.EarlyAfterFail == 0 && r.Orphans == 0 &&
		r.BadInfo == 0 && r.Unknown == 0 && !r.NotDrained
}

// earlyTolerance covers the broker's millisecond append times: a due time
// clamped to a Kafka LogAppendTime (truncated to the millisecond) + delay
// can be up to 1ms before the failure's own clock reading + delay.
const earlyTolerance = time.Millisecond

// analyze judges what a drill observed.
func analyze(ev evidence) result {
	r := result{
		Messages:    len(ev.Plans),
		Republished: len(ev.Republished),
		Handlings:   len(ev.Handlings),
		NotDrained:  !ev.Drained,
		Torn:        ev.Torn,
		Examples:    map[string][]string{},
	}
	example := func(what, uuid string) {
		if len(r.Examples[what]) < 5 {
			r.Examples[what] = append(r.Examples[what], uuid)
		}
	}
	var lastFault time.Time
	for _, f := range ev.Faults {
		switch f.Kind {
		case consumerKill:
			r.Kills++
		case brokerRestart:
			r.Restarts++
		}
		lastFault = f.At
		if f.End.After(lastFault) {
			lastFault = f.End
		}
	}
	if ev.Drained && !lastFault.IsZero() {
		r.DrainAfterLast = ev.DrainedAt.Sub(lastFault)
	}

	hs := slices.Clone(ev.Handlings)
	sort.SliceStable(hs, func(i, j int) bool { return hs[i].Start.Before(hs[j].Start) })

	type key struct {
		uuid    string
		attempt int
	}
	byAttempt := map[key][]handling{}
	successes := map[string]int{}
	for _, h := range hs {
		if _, known := ev.Plans[h.UUID]; !known {
			r.Unknown++
			example("unknown", h.UUID)
			continue
		}
		if h.Attempt < 0 {
			r.BadInfo++
			example("bad_info", h.UUID)
			continue
		}
		byAttempt[key{h.UUID, h.Attempt}] = append(byAttempt[key{h.UUID, h.Attempt}], h)
		if h.Step == stepOK {
			successes[h.UUID]++
		}
	}

	// Never early: against the due time carried, and against the earliest
	// journaled failure of the attempt before plus the tier's delay (which
	// does not trust the library's own stamps).
	var lateness []time.Duration
	for _, h := range hs {
		if h.Tier == 0 || h.Attempt < 2 {
			continue
		}
		if _, known := ev.Plans[h.UUID]; !known {
			continue
		}
		if !h.Due.IsZero() {
			if h.Start.Before(h.Due) {
				r.EarlyStamped++
				example("early_stamped", h.UUID)
			} else {
				lateness = append(lateness, h.Start.Sub(h.Due))
			}
		}
		prev := byAttempt[key{h.UUID, h.Attempt - 1}]
		var firstFail time.Time
		for _, p := range prev {
			if p.Step == stepFail && (firstFail.IsZero() || p.End.Before(firstFail)) {
				firstFail = p.End
			}
		}
		if firstFail.IsZero() {
			r.Orphans++
			example("orphan", h.UUID)
			continue
		}
		if h.Tier-1 < len(ev.Delays) && h.Start.Before(firstFail.Add(ev.Delays[h.Tier-1]-earlyTolerance)) {
			r.EarlyAfterFail++
			example("early_after_fail", h.UUID)
		}
	}
	if len(lateness) > 0 {
		slices.Sort(lateness)
		r.LatenessP50 = lateness[len(lateness)/2]
		r.LatenessP99 = lateness[len(lateness)*99/100]
		r.LatenessMax = lateness[len(lateness)-1]
	}

	// Duplicates, each put down to the first fault that was under way
	// between the first handling of its attempt and itself; failing that,
	// to the fault behind a duplicate of the attempt before (a duplicate
	// failure publishes a second copy, which is handled again later: a
	// cascade of that fault).
	perFault := make([]int, len(ev.Faults))
	keys := make([]key, 0, len(byAttempt))
	for k := range byAttempt {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].attempt < keys[j].attempt })
	cause := map[key]int{} // fault behind a (UUID, attempt)'s duplicates
	for _, k := range keys {
		list := byAttempt[k]
		if ev.Republished[k.uuid] {
			r.ProducerDups += len(list) - 1
			continue
		}
		for _, dup := range list[1:] {
			r.DupHandlings++
			i := faultBehind(ev.Faults, list[0].End, dup.Start)
			if i < 0 {
				if up, ok := cause[key{k.uuid, k.attempt - 1}]; ok {
					i = up
					r.DupCascaded++
				}
			}
			if i < 0 {
				r.DupNoFault++
				continue
			}
			cause[k] = i
			perFault[i]++
			switch ev.Faults[i].Kind {
			case consumerKill:
				r.DupAfterKill++
			case brokerRestart:
				r.DupAfterRestart++
			}
		}
	}
	r.DupPerFault = perFault
	for i, n := range perFault {
		switch ev.Faults[i].Kind {
		case consumerKill:
			r.MaxDupPerKill = max(r.MaxDupPerKill, n)
		case brokerRestart:
			r.MaxDupPerRestart = max(r.MaxDupPerRestart, n)
		}
	}

	// Outcomes.
	for uuid, p := range ev.Plans {
		dead := ev.DeadLetters[uuid]
		if !ev.Republished[uuid] {
			r.DupDeadLetters += max(dead-1, 0)
			r.DupSuccesses += max(successes[uuid]-1, 0)
		}
		switch p.expect(ev.MaxAttempts) {
		case succeeds:
			r.ExpectedOK++
			switch {
			case dead > 0:
				r.WronglyDead++
				example("wrongly_dead", uuid)
			case successes[uuid] == 0:
				r.Lost++
				example("lost", uuid)
			}
		case deadLettered:
			r.ExpectedDead++
			switch {
			case successes[uuid] > 0:
				r.UnexpectedOK++
				example("unexpected_ok", uuid)
			case dead == 0:
				r.Lost++
				example("lost", uuid)
			}
		}
	}
	for uuid := range ev.DeadLetters {
		if _, known := ev.Plans[uuid]; !known {
			r.Unknown++
			example("unknown", uuid)
		}
	}
	return r
}

// faultBehind returns the index of the first fault under way at some time
// in (from, to): killed before to, back after from. That fault is what a
// duplicate handled at to, of a handling that ended at from, is put down
// to: the handling's offset or ack had not reached the broker when it hit
// (had it, there would be no duplicate), and the faults after it only
// delayed the replay. A message handled while the broker was down (from a
// consumer's buffer) and handled again once it was back is the restart's.
// -1 if none.
func faultBehind(faults []fault, from, to time.Time) int {
	for i, f := range faults {
		end := f.End
		if end.Before(f.At) {
			end = f.At
		}
		if f.At.Before(to) && end.After(from) {
			return i
		}
	}
	return -1
}
