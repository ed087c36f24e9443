package tiered_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestIsPermanent(t *testing.T) {
	cause := errors.New("card declined")
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain error", cause, false},
		{"tiered.Permanent", tiered.Permanent(cause), true},
		{"tiered.Permanent wrapped with %w", fmt.Errorf("charge order 42: %w", tiered.Permanent(cause)), true},
		{"tiered.Permanent wrapped twice", fmt.Errorf("a: %w", fmt.Errorf("b: %w", tiered.Permanent(cause))), true},
		{"tiered.Permanent inside errors.Join", errors.Join(errors.New("other"), tiered.Permanent(cause)), true},
		{"backoff.Permanent", backoff.Permanent(cause), true},
		{"backoff.Permanent wrapped with %w", fmt.Errorf("charge: %w", backoff.Permanent(cause)), true},
		{"tiered.Permanent wrapped with %v loses the mark", fmt.Errorf("charge: %v", tiered.Permanent(cause)), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, tiered.IsPermanent(tt.err))
		})
	}
}

func TestPermanent_keepsTheCause(t *testing.T) {
	cause := errors.New("card declined")
	err := tiered.Permanent(cause)

	require.Equal(t, "card declined", err.Error(), "the mark does not change the text")
	require.ErrorIs(t, err, cause)
	require.NoError(t, tiered.Permanent(nil), "Permanent(nil) is nil")
}
