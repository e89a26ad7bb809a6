// Package sessiond is the Go client of sessiond, the gRPC session service for
// AI-agent runtimes.
//
// It is a thin, hand-written layer over the generated code in the sessiondv1
// package (messages and the SessionService, MessageService and StatsService
// stubs, produced by `make clients`; never edited by hand). The layer adds what
// every caller of the raw stubs would otherwise write again, following the
// rules shared by all sessiond clients (docs/clients.md in the repository):
//
//   - a Client built from an address and options (API key, TLS, default
//     deadline, retry policy), closed with Close;
//   - one ctx-first method per RPC returning (response, error), with the
//     default deadline applied when ctx has none;
//   - retries of retry-safe requests only (RetryIsSafe), on UNAVAILABLE, with
//     jittered exponential backoff inside the call's deadline;
//   - errors as *Error, matched with errors.As, or with errors.Is against a
//     Reason constant or ErrRelistRequired;
//   - page walkers (Sessions, Messages) as iter.Seq2;
//   - Watch, a WatchSessions stream as an iter.Seq2 that reconnects by itself,
//     resumes at the revision after the last one it delivered (no gap, no
//     duplicate), joins fragmented revisions, and ends with ErrRelistRequired
//     when the change log no longer holds its resume point.
package sessiond
