package kafka_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Production imports only what production needs: an application that
// imports the Kafka backend, or package pubsub for any backend (or the
// router, the dlq API, retryctl), must not link an in-memory Kafka broker
// (kfake) or franz-go. Only package pubsub/embedded does.
func TestDeps_noFakeBrokerInProduction(t *testing.T) {
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command is needed to list dependencies")
	for _, pkg := range []string{
		"github.com/retry-kafka/retry-kafka/pubsub/kafka",
		"github.com/retry-kafka/retry-kafka/pubsub",
		"github.com/retry-kafka/retry-kafka/router",
		"github.com/retry-kafka/retry-kafka/dlq",
		"github.com/retry-kafka/retry-kafka/cmd/retryctl",
	} {
		out, err := exec.Command(goBin, "list", "-deps", pkg).CombinedOutput()
		require.NoError(t, err, "go list -deps %s: %s", pkg, out)
		deps := strings.Fields(string(out))
		require.Contains(t, deps, pkg)
		for _, dep := range deps {
			require.False(t, strings.HasPrefix(dep, "github.com/twmb/franz-go"), "%s links %s", pkg, dep)
		}
	}
	out, err := exec.Command(goBin, "list", "-deps", "github.com/retry-kafka/retry-kafka/pubsub/embedded").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, strings.Fields(string(out)), "github.com/twmb/franz-go/pkg/kfake", "the check must be able to see kfake where it is linked")
}
