package tiered

import (
	"errors"

	"github.com/cenkalti/backoff/v4"
)

// Sentinel errors. Compare with [errors.Is].
var (
	// ErrInvalidPolicy is wrapped by every error of [Policy.Validate].
	ErrInvalidPolicy = errors.New("invalid retry policy")
	// ErrInvalidTopicName is wrapped by errors about a topic name that a
	// backend cannot use.
	ErrInvalidTopicName = errors.New("invalid topic name")
	// ErrInvalidMetadata is wrapped by errors about retry metadata that
	// cannot be parsed.
	ErrInvalidMetadata = errors.New("invalid retry metadata")
	// ErrClosed is returned by [Subscriber.Subscribe] after
	// [Subscriber.Close].
	ErrClosed = errors.New("subscriber closed")
	// ErrUnpublishable is wrapped by a publisher's error when the message
	// can never be published as it is, so that trying again cannot help:
	// it is too large for the broker, its topic does not exist (after
	// Prepare made it) or is invalid, the client is not authorized, or
	// the broker rejects the client's config. Backends wrap the errors
	// they know to be such; every other publish error is taken as
	// temporary. The retry middleware dead-letters a copy of such a
	// message that fits instead of trying again.
	ErrUnpublishable = errors.New("message cannot be published")
)

// permanentError marks an error that must not be retried.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as permanent: a handler that returns it (directly or
// wrapped) sends the message straight to the dead-letter topic, whatever
// attempts are left. Permanent(nil) returns nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or any error it wraps, was marked with
// [Permanent] or with backoff.Permanent from github.com/cenkalti/backoff/v4.
func IsPermanent(err error) bool {
	if _, ok := errors.AsType[*permanentError](err); ok {
		return true
	}
	_, ok := errors.AsType[*backoff.PermanentError](err)
	return ok
}
