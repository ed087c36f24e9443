package offsets_test

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub/kafka/internal/offsets"
)

func TestTracker_commitsUpToOldestUnresolved(t *testing.T) {
	tests := []struct {
		name string
		run  func(tr *offsets.Tracker) int64 // returns the expected commit point
	}{
		{"nothing resolved", func(tr *offsets.Tracker) int64 {
			tr.Add(10)
			tr.Add(11)
			return 10
		}},
		{"in order", func(tr *offsets.Tracker) int64 {
			tr.Add(0).Ack()
			tr.Add(1).Ack()
			return 2
		}},
		{"out of order", func(tr *offsets.Tracker) int64 {
			a, b, c := tr.Add(0), tr.Add(1), tr.Add(2)
			c.Ack()
			b.Ack()
			_ = a
			return 0
		}},
		{"gaps in offsets (compaction, transaction markers)", func(tr *offsets.Tracker) int64 {
			tr.Add(3).Ack()
			r := tr.Add(7)
			tr.Add(12).Ack()
			_ = r
			return 7
		}},
		{"a copy holds its record", func(tr *offsets.Tracker) int64 {
			a := tr.Add(0)
			require.True(t, a.Attach())
			a.Ack()
			tr.Add(1).Ack()
			return 0
		}},
		{"a confirmed copy releases it", func(tr *offsets.Tracker) int64 {
			a := tr.Add(0)
			require.True(t, a.Attach())
			a.Ack()
			tr.Add(1).Ack()
			a.Confirm()
			return 2
		}},
		{"two copies need two confirmations", func(tr *offsets.Tracker) int64 {
			a := tr.Add(5)
			require.True(t, a.Attach())
			require.True(t, a.Attach())
			a.Ack()
			a.Confirm()
			return 5
		}},
		{"acked, then a copy before settling (early ack)", func(tr *offsets.Tracker) int64 {
			a := tr.Add(0)
			a.Ack()
			tr.Add(1).Ack()
			require.True(t, a.Attach(), "not settled yet: the copy can still hold the offset")
			return 0
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := offsets.New(100)
			want := tt.run(tr)
			got, ok := tr.Settle()
			require.True(t, ok)
			require.Equal(t, want, got)
		})
	}
}

func TestTracker_settledRecordRefusesCopies(t *testing.T) {
	tr := offsets.New(10)
	a := tr.Add(0)
	a.Ack()
	commit, _ := tr.Settle()
	require.Equal(t, int64(1), commit)
	require.False(t, a.Attach(), "its offset may be committed: the copy must be produced before returning")

	tr.Add(1) // unresolved
	c := tr.Add(2)
	c.Ack()
	commit, _ = tr.Settle()
	require.Equal(t, int64(1), commit)
	require.True(t, c.Attach(), "behind an unresolved record, nothing past it is committed")
}

func TestTracker_closeRefusesEverything(t *testing.T) {
	tr := offsets.New(10)
	a := tr.Add(4)
	commit, ok := tr.Close()
	require.True(t, ok)
	require.Equal(t, int64(4), commit)
	require.False(t, a.Attach())
	require.Nil(t, tr.Add(5))
	_, ok = offsets.New(1).Settle()
	require.False(t, ok, "no record, no commit point")
}

func TestTracker_windowBoundsTheSpan(t *testing.T) {
	tr := offsets.New(3)
	require.True(t, tr.HasRoom())
	stuck := tr.Add(0)
	require.True(t, stuck.Attach())
	stuck.Ack()
	tr.Add(1).Ack()
	require.True(t, tr.HasRoom())
	tr.Add(2).Ack()
	require.False(t, tr.HasRoom(), "three offsets from the stuck record")
	changed := tr.Changed()
	stuck.Confirm()
	<-changed
	require.True(t, tr.HasRoom())
}

// TestTracker_randomResolutionOrder checks the tracker against a model on
// random histories: records added with random gaps, acked, given copies and
// confirmed in random order, settled at random moments. The commit point
// is always the oldest unresolved offset (or the next offset), never goes
// back, Attach refuses exactly the settled records, and HasRoom follows the
// window.
func TestTracker_randomResolutionOrder(t *testing.T) {
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, seed*7+1))
		window := 1 + rng.IntN(8)
		tr := offsets.New(window)

		type state struct {
			rec    *offsets.Record
			acked  bool
			copies int
		}
		var recs []*state
		next := int64(rng.IntN(5))
		lastCommit := int64(-1)
		settledBelow := int64(-1) // resolved records below this refuse copies
		modelCommit := func() int64 {
			for _, s := range recs {
				if !s.acked || s.copies > 0 {
					return s.rec.Offset()
				}
			}
			if len(recs) == 0 {
				return next
			}
			return recs[len(recs)-1].rec.Offset() + 1
		}
		for step := 0; step < 200; step++ {
			switch op := rng.IntN(6); {
			case op == 0 && len(recs) > 0 || len(recs) == 0:
				if len(recs) > 0 {
					span := recs[len(recs)-1].rec.Offset() + 1 - modelCommit()
					require.Equal(t, span < int64(window), tr.HasRoom(), "seed %d step %d", seed, step)
				}
				if len(recs) > 0 && !tr.HasRoom() {
					continue
				}
				recs = append(recs, &state{rec: tr.Add(next)})
				next += 1 + int64(rng.IntN(3))
			case op == 1 || op == 2:
				s := recs[rng.IntN(len(recs))]
				s.rec.Ack()
				s.acked = true
			case op == 3:
				s := recs[rng.IntN(len(recs))]
				resolved := s.acked && s.copies == 0
				want := !(resolved && s.rec.Offset() < settledBelow)
				require.Equal(t, want, s.rec.Attach(), "seed %d step %d: attach to %d", seed, step, s.rec.Offset())
				if want {
					s.copies++
				}
			case op == 4:
				s := recs[rng.IntN(len(recs))]
				if s.copies > 0 {
					s.rec.Confirm()
					s.copies--
				}
			case op == 5:
				commit, ok := tr.Settle()
				require.True(t, ok)
				require.Equal(t, modelCommit(), commit, "seed %d step %d", seed, step)
				require.GreaterOrEqual(t, commit, lastCommit, "the commit point never goes back")
				lastCommit, settledBelow = commit, commit
			}
		}
		want := modelCommit()
		got, ok := tr.Close()
		require.True(t, ok)
		require.Equal(t, want, got, "seed %d", seed)
		unresolved := 0
		for _, s := range recs {
			if !s.acked || s.copies > 0 {
				unresolved++
			}
		}
		require.Equal(t, unresolved, tr.Unresolved())
	}
}
