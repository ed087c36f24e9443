// Command retryctl operates the tier and dead-letter topics of
// retry-kafka on Kafka or Redis: list what waits where, read and count
// dead letters, send them back to their handler once the bug is fixed, and
// delete them. It is a thin layer over the dlq package.
//
//	export BROKER_URL=kafka://127.0.0.1:9092       # or redis://127.0.0.1:6379/0
//	retryctl topics                                  # handlers, tiers, dead-letter topics
//	retryctl dlq stats orders.billing.dlq            # what failed, and why
//	retryctl dlq redrive orders.billing.dlq --dry-run
//	retryctl dlq redrive orders.billing.dlq --rate 200
//
// Run "retryctl --help" and "retryctl dlq redrive --help" for the rest.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/pubsub"
)

// Exit codes. Scripts can rely on them.
const (
	exitOK           = 0 // done
	exitFailure      = 1 // the broker failed, or the command was interrupted
	exitUsage        = 2 // bad flags, arguments, filter or URL; not a dead-letter topic; not supported by the broker
	exitNotFound     = 3 // the topic or message does not exist
	exitNotConfirmed = 4 // redrive or purge not confirmed (answer no, or no answer without --yes)
	exitSkipped      = 5 // a redrive finished, but skipped some selected messages (see its report)
)

// brokerEnv names the environment variable that gives --broker its
// default, the one the examples read too.
const brokerEnv = "BROKER_URL"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitError carries an exit code up to run.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

// run runs retryctl with args and returns its exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := app.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if app.client != nil {
		_ = app.client.Close()
	}
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	if code != exitSkipped { // the report already said what was skipped
		fmt.Fprintln(stderr, "retryctl:", err)
	}
	if code == exitUsage && app.usageHint != "" {
		fmt.Fprintln(stderr, app.usageHint)
	}
	return code
}

// exitCode maps an error to an exit code.
func exitCode(err error) int {
	var e *exitError
	switch {
	case errors.As(err, &e):
		return e.code
	case errors.Is(err, dlq.ErrUnknownTopic), errors.Is(err, dlq.ErrNotFound):
		return exitNotFound
	case errors.Is(err, dlq.ErrInvalidFilter), errors.Is(err, dlq.ErrNotDeadLetterTopic),
		errors.Is(err, dlq.ErrNotSupported), errors.Is(err, dlq.ErrUnsupportedBackend),
		errors.Is(err, pubsub.ErrUnknownScheme):
		return exitUsage
	case errors.Is(err, context.Canceled):
		return exitFailure
	}
	// The backends' URL parsers have no sentinel; their errors name the
	// URL.
	if strings.Contains(err.Error(), " URL ") || strings.HasPrefix(err.Error(), "invalid Redis URL") {
		return exitUsage
	}
	return exitFailure
}

// app is one run of retryctl: its streams, global flags and client.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	broker    string
	json      bool
	client    *dlq.Client
	usageHint string
}

const rootLong = `retryctl operates the tier and dead-letter topics of retry-kafka, on Kafka or
Redis Streams: see what waits where, read and count dead letters, send them
back to their handler once the bug is fixed (redrive), and delete them (purge).

Point it at the broker with --broker or ` + brokerEnv + `, using the URL your
application gives pubsub.Open, so that consumer group prefixes agree:

  kafka://host1:9092,host2:9092?group_prefix=app.
  redis://[user:password@]host:6379/0?consumer_group_prefix=app.

Topics are found by the default naming rule: {topic}.{handler}.retry.{delay}
for tiers, {topic}.{handler}.dlq for dead letters. Reading never consumes:
no consumer group of your application moves.

Output is a table for people; --json gives JSON for scripts (one document, or
JSON Lines for listings). Progress and prompts go to stderr.

Exit codes:
  0  done
  1  the broker failed, or the command was interrupted
  2  bad flags, arguments, filter or URL; not a dead-letter topic; not
     supported by the broker (a filtered purge on Kafka)
  3  the topic or message does not exist
  4  redrive or purge not confirmed (no answer, or not "y", without --yes)
  5  a redrive (not a dry run) finished but skipped some selected messages
     (redrive cap reached, stubs without payload, entries Watermill cannot
     decode)`

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "retryctl",
		Short:         "Operate retry-kafka's tiers and dead-letter topics on Kafka or Redis",
		Long:          rootLong,
		SilenceUsage:  true,
		SilenceErrors: true,
		Example: `  export BROKER_URL=kafka://127.0.0.1:9092
  retryctl topics
  retryctl dlq stats orders.billing.dlq
  retryctl dlq ls orders.billing.dlq --reason 'timeout' --since 2h
  retryctl dlq redrive orders.billing.dlq --dry-run
  retryctl dlq redrive orders.billing.dlq --rate 200 --yes`,
	}
	root.PersistentFlags().StringVar(&a.broker, "broker", os.Getenv(brokerEnv),
		"broker URL, as the application gives pubsub.Open (default $"+brokerEnv+")")
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print JSON (JSON Lines for listings) instead of tables")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		a.usageHint = "Run '" + c.CommandPath() + " --help' for usage."
		return withCode(exitUsage, err)
	})
	root.AddCommand(a.topicsCommand(), a.tierCommand(), a.dlqCommand())
	return root
}

// open opens the client on --broker, once.
func (a *app) open(ctx context.Context) (*dlq.Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	if strings.TrimSpace(a.broker) == "" {
		return nil, withCode(exitUsage, fmt.Errorf("no broker: pass --broker URL or set %s (kafka://host:9092 or redis://host:6379/0)", brokerEnv))
	}
	c, err := dlq.Open(ctx, a.broker, nil)
	if err != nil {
		return nil, err
	}
	a.client = c
	return c, nil
}

// args checks the positional arguments, as a usage error.
func args(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, got []string) error {
		if len(got) != n {
			return withCode(exitUsage, fmt.Errorf("%s takes %s (got %d arguments); see --help", cmd.CommandPath(), names, len(got)))
		}
		return nil
	}
}
