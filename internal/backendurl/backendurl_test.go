package backendurl_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/backendurl"
)

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"redis://user:s3cret@host:6379/0", "redis://user:xxxxx@host:6379/0"},
		{"redis://:s3cret@host:6379", "redis://:xxxxx@host:6379"},
		{"redis://user@host", "redis://user@host"},
		{"redis://host:6379/0?max_len=1", "redis://host:6379/0?max_len=1"},
		// Does not parse: redacted by hand.
		{"redis://user:s3cret@[::1/0", "redis://user:xxxxx@[::1/0"},
		{"redis://user:s3cr@t@host:%zz/0", "redis://user:xxxxx@host:%zz/0"},
		{"user:s3cret@host:6379", "user:xxxxx@host:6379"},
		{"%zz", "%zz"},
		{"", ""},
	} {
		t.Run(tc.in, func(t *testing.T) {
			require.Equal(t, tc.want, backendurl.Redact(tc.in))
		})
	}
}

func TestParams(t *testing.T) {
	known := []string{"a", "b"}
	for _, tc := range []struct {
		name, query string
		want        map[string]string
		wantErr     string
	}{
		{"none", "", map[string]string{}, ""},
		{"known", "a=1&b=", map[string]string{"a": "1", "b": ""}, ""},
		{"escaped", "a=x%2Cy", map[string]string{"a": "x,y"}, ""},
		{"unknown", "a=1&zz=2", nil, `redis URL "redis://u:xxxxx@h/?q": unknown parameter "zz" (known: a, b)`},
		{"repeated", "a=1&a=2", nil, `redis URL "redis://u:xxxxx@h/?q": parameter "a" is given 2 times`},
		{"bad escape", "a=%zz", nil, `redis URL "redis://u:xxxxx@h/?q": invalid escape "%zz" in its parameters`},
		{"semicolon", "a=1;b=2", nil, `its parameters do not parse`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := backendurl.Params("redis", "redis://u:pw@h/?q", tc.query, known)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.NotContains(t, err.Error(), "pw")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}
