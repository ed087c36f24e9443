// Package backendurl reads backend URLs the same way for every backend:
// parameters that are unknown or given twice are errors that name the
// parameter, and no error shows a password.
package backendurl

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// Redact returns rawURL with the password of its user info replaced by
// "xxxxx", as [url.URL.Redacted] does, also when rawURL does not parse.
func Redact(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil && u.Opaque == "" {
		return u.Redacted()
	}
	_, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		rest = rawURL
	}
	prefix := rawURL[:len(rawURL)-len(rest)]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	at := strings.LastIndex(rest[:end], "@")
	if at < 0 {
		return rawURL
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return rawURL
	}
	return prefix + user + ":xxxxx" + rest[at:]
}

// Error returns an error about rawURL of a backend of kind ("redis",
// "mem"): `{kind} URL "{redacted URL}": {problem}`.
func Error(kind, rawURL, format string, args ...any) error {
	return fmt.Errorf("%s URL %q: %s", kind, Redact(rawURL), fmt.Sprintf(format, args...))
}

// Params parses the query of rawURL, a URL of a backend of kind, and
// returns the value of each parameter. A query that does not parse, a
// parameter given more than once and one not in known are errors that name
// it (and, for an unknown one, list known).
func Params(kind, rawURL, rawQuery string, known []string) (map[string]string, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		var escape url.EscapeError
		if errors.As(err, &escape) {
			return nil, Error(kind, rawURL, "invalid escape %q in its parameters", string(escape))
		}
		return nil, Error(kind, rawURL, "its parameters do not parse: %v", err)
	}
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make(map[string]string, len(q))
	for _, name := range names {
		if !contains(known, name) {
			return nil, Error(kind, rawURL, "unknown parameter %q (known: %s)", name, strings.Join(known, ", "))
		}
		if vs := q[name]; len(vs) > 1 {
			return nil, Error(kind, rawURL, "parameter %q is given %d times; give it once", name, len(vs))
		}
		out[name] = q[name][0]
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
