package tiered_test

import (
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestPolicy_validateRejectsInvalidConfig(t *testing.T) {
	tests := []struct {
		name     string
		policy   tiered.Policy
		wantText []string // substrings the error must contain
	}{
		{
			name:     "zero value with retries asked for",
			policy:   tiered.Policy{MaxAttempts: 3},
			wantText: []string{"MaxAttempts is 3", "Delays is empty"},
		},
		{
			name:     "the zero Policy",
			policy:   tiered.Policy{},
			wantText: []string{"the zero Policy retries nothing", "MaxAttempts to 1"},
		},
		{
			name:     "two tiers with one delay share a topic",
			policy:   tiered.Policy{Delays: []time.Duration{time.Second, time.Minute, 60 * time.Second}},
			wantText: []string{"Delays[1] and Delays[2] are both 1m0s", `"{topic}.{handler}.retry.1m"`},
		},
		{
			name:     "zero delay",
			policy:   tiered.Policy{Delays: []time.Duration{time.Second, 0}},
			wantText: []string{"Delays[1]", "must be positive"},
		},
		{
			name:     "negative delay",
			policy:   tiered.Policy{Delays: []time.Duration{-time.Second}},
			wantText: []string{"Delays[0] is -1s", "must be positive"},
		},
		{
			name:     "negative MaxAttempts",
			policy:   tiered.Policy{Delays: []time.Duration{time.Second}, MaxAttempts: -1},
			wantText: []string{"MaxAttempts is -1", "at least 1"},
		},
		{
			name:     "negative Quick.Attempts",
			policy:   tiered.Policy{Delays: []time.Duration{time.Second}, Quick: tiered.Quick{Attempts: -2}},
			wantText: []string{"Quick.Attempts is -2", "must not be negative"},
		},
		{
			name: "every problem at once",
			policy: tiered.Policy{
				Delays: []time.Duration{0, -time.Second}, MaxAttempts: -1, Quick: tiered.Quick{Attempts: -1},
			},
			wantText: []string{"MaxAttempts is -1", "Delays[0]", "Delays[1]", "Quick.Attempts"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := append([]time.Duration(nil), tt.policy.Delays...)
			var err error
			require.NotPanics(t, func() { err = tt.policy.Validate() })
			require.ErrorIs(t, err, tiered.ErrInvalidPolicy)
			for _, want := range tt.wantText {
				require.ErrorContains(t, err, want)
			}
			require.Equal(t, before, tt.policy.Delays, "Validate must not change the policy")
		})
	}
}

func TestPolicy_validateAcceptsValidConfig(t *testing.T) {
	tests := []struct {
		name   string
		policy tiered.Policy
	}{
		{"MaxAttempts 1 without delays", tiered.Policy{MaxAttempts: 1}},
		{"each tier once", tiered.Policy{Delays: []time.Duration{time.Second, time.Minute}}},
		{"last tier repeats", tiered.Policy{Delays: []time.Duration{time.Second}, MaxAttempts: 10}},
		{"quick attempts with default back-off", tiered.Policy{Delays: []time.Duration{time.Second}, Quick: tiered.Quick{Attempts: 3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, tt.policy.Validate())
		})
	}
}

func TestPolicy_withDefaultsFillsOptionalFieldsOnACopy(t *testing.T) {
	delays := []time.Duration{time.Second, time.Minute}
	p := tiered.Policy{Delays: delays, Quick: tiered.Quick{Attempts: 2}}

	d := p.WithDefaults()

	require.Equal(t, 3, d.MaxAttempts, "MaxAttempts defaults to len(Delays)+1")
	require.NotNil(t, d.Quick.BackOff, "Quick.BackOff gets a default when quick attempts are asked for")
	require.Zero(t, p.MaxAttempts, "the receiver is not changed")
	require.Nil(t, p.Quick.BackOff)
	d.Delays[0] = time.Hour
	require.Equal(t, time.Second, delays[0], "the copy does not share the caller's Delays")
}

func TestPolicy_tiersAndTierFor(t *testing.T) {
	s, m, h := time.Second, time.Minute, time.Hour
	type tierFor struct {
		attempt  int
		wantTier int
		wantOK   bool
	}
	tests := []struct {
		name      string
		policy    tiered.Policy
		wantTiers int
		tierFor   []tierFor
	}{
		{
			name:      "each tier once (default MaxAttempts)",
			policy:    tiered.Policy{Delays: []time.Duration{s, m, h}},
			wantTiers: 3,
			tierFor:   []tierFor{{1, 1, true}, {2, 2, true}, {3, 3, true}, {4, 0, false}},
		},
		{
			name:      "attempts outnumber tiers: the last tier repeats",
			policy:    tiered.Policy{Delays: []time.Duration{s, m}, MaxAttempts: 5},
			wantTiers: 2,
			tierFor:   []tierFor{{1, 1, true}, {2, 2, true}, {3, 2, true}, {4, 2, true}, {5, 0, false}, {6, 0, false}},
		},
		{
			name:      "tiers outnumber attempts: the extra tiers are never reached",
			policy:    tiered.Policy{Delays: []time.Duration{s, m, h}, MaxAttempts: 2},
			wantTiers: 1,
			tierFor:   []tierFor{{1, 1, true}, {2, 0, false}},
		},
		{
			name:      "MaxAttempts 1: no tier",
			policy:    tiered.Policy{Delays: []time.Duration{s}, MaxAttempts: 1},
			wantTiers: 0,
			tierFor:   []tierFor{{1, 0, false}},
		},
		{
			name:      "no delays: no tier",
			policy:    tiered.Policy{},
			wantTiers: 0,
			tierFor:   []tierFor{{1, 0, false}},
		},
		{
			name:      "invalid negative MaxAttempts never panics",
			policy:    tiered.Policy{Delays: []time.Duration{s}, MaxAttempts: -3},
			wantTiers: 0,
			tierFor:   []tierFor{{1, 0, false}},
		},
		{
			name:      "attempt 0 (nothing failed yet) maps to the first tier",
			policy:    tiered.Policy{Delays: []time.Duration{s, m}},
			wantTiers: 2,
			tierFor:   []tierFor{{0, 1, true}, {-1, 1, true}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.wantTiers, tt.policy.Tiers())
			for _, c := range tt.tierFor {
				tier, ok := tt.policy.TierFor(c.attempt)
				require.Equal(t, c.wantOK, ok, "TierFor(%d) ok", c.attempt)
				if ok {
					require.Equal(t, c.wantTier, tier, "TierFor(%d)", c.attempt)
					require.GreaterOrEqual(t, tier, 1, "TierFor(%d) numbers tiers from 1", c.attempt)
					require.LessOrEqual(t, tier, tt.policy.Tiers(), "TierFor(%d) must name a tier that Tiers counts", c.attempt)
				}
			}
		})
	}
}

func TestPolicy_decide(t *testing.T) {
	boom := errors.New("boom")
	var seen []tiered.ClassifyParams
	classify := func(p tiered.ClassifyParams) tiered.Decision {
		seen = append(seen, p)
		if errors.Is(p.Err, errBadInput) {
			return tiered.DeadLetter
		}
		return tiered.Retry
	}
	tests := []struct {
		name         string
		classify     func(tiered.ClassifyParams) tiered.Decision
		err          error
		want         tiered.Decision
		wantClassify bool
	}{
		{"plain error is retried by default", nil, boom, tiered.Retry, false},
		{"tiered.Permanent is dead-lettered", nil, tiered.Permanent(boom), tiered.DeadLetter, false},
		{"wrapped tiered.Permanent is dead-lettered", nil, errors.Join(errors.New("x"), tiered.Permanent(boom)), tiered.DeadLetter, false},
		{"backoff.Permanent is dead-lettered", nil, backoff.Permanent(boom), tiered.DeadLetter, false},
		{"permanent wins over the classifier", classify, tiered.Permanent(boom), tiered.DeadLetter, false},
		{"classifier says retry", classify, boom, tiered.Retry, true},
		{"classifier says dead-letter", classify, errBadInput, tiered.DeadLetter, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen = nil
			msg := message.NewMessage("m1", nil)
			p := tiered.Policy{Delays: []time.Duration{time.Second}, Classify: tt.classify}
			got := p.Decide(tiered.ClassifyParams{Err: tt.err, Message: msg, Attempt: 7})
			require.Equal(t, tt.want, got)
			if tt.wantClassify {
				require.Len(t, seen, 1)
				require.Equal(t, 7, seen[0].Attempt)
				require.Same(t, msg, seen[0].Message)
				require.Equal(t, tt.err, seen[0].Err)
			} else {
				require.Empty(t, seen)
			}
		})
	}
}

var errBadInput = errors.New("bad input")

func TestDecision_string(t *testing.T) {
	require.Equal(t, "retry", tiered.Retry.String())
	require.Equal(t, "dead-letter", tiered.DeadLetter.String())
	require.Equal(t, "Decision(7)", tiered.Decision(7).String())
}

func TestDelaysFromBackOff(t *testing.T) {
	exponential := func(maxElapsed time.Duration) *backoff.ExponentialBackOff {
		b := backoff.NewExponentialBackOff()
		b.InitialInterval = time.Second
		b.Multiplier = 2
		b.RandomizationFactor = 0
		b.MaxInterval = time.Minute
		b.MaxElapsedTime = maxElapsed
		return b
	}
	s := time.Second
	tests := []struct {
		name string
		b    backoff.BackOff
		n    int
		want []time.Duration
	}{
		{
			name: "exponential gives increasing delays",
			b:    exponential(time.Hour),
			n:    5,
			want: []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 16 * s},
		},
		{
			name: "delays capped by MaxInterval are not repeated",
			b:    exponential(time.Hour),
			n:    10,
			want: []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, time.Minute},
		},
		{
			name: "MaxElapsedTime ends the list early",
			b:    exponential(5 * s),
			n:    10,
			want: []time.Duration{1 * s, 2 * s, 4 * s},
		},
		{
			name: "a constant back-off gives one tier",
			b:    backoff.NewConstantBackOff(30 * s),
			n:    4,
			want: []time.Duration{30 * s},
		},
		{
			name: "delays are rounded to the millisecond",
			b:    backoff.NewConstantBackOff(1500*time.Millisecond + 400*time.Microsecond),
			n:    1,
			want: []time.Duration{1500 * time.Millisecond},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tiered.DelaysFromBackOff(tt.b, tt.n)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			for i := 1; i < len(got); i++ {
				require.Greater(t, got[i], got[i-1], "delays must increase")
			}
			require.NoError(t, tiered.Policy{Delays: got}.Validate(), "the delays make a valid policy")
		})
	}
}

func TestDelaysFromBackOff_rejectsUselessInput(t *testing.T) {
	tests := []struct {
		name     string
		b        backoff.BackOff
		n        int
		wantText string
	}{
		{"nil back-off", nil, 3, "nil back-off"},
		{"zero delays asked for", backoff.NewConstantBackOff(time.Second), 0, "asked for 0 delays"},
		{"back-off that stops at once", &backoff.StopBackOff{}, 3, "no positive delay"},
		{"back-off of zero delays", &backoff.ZeroBackOff{}, 3, "no positive delay"},
		{"sub-millisecond back-off rounds to zero", backoff.NewConstantBackOff(100 * time.Microsecond), 3, "no positive delay"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tiered.DelaysFromBackOff(tt.b, tt.n)
			require.ErrorIs(t, err, tiered.ErrInvalidPolicy)
			require.ErrorContains(t, err, tt.wantText)
			require.Nil(t, got)
		})
	}
}
