package sessiond

import (
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the ErrorInfo domain of the errors sessiond itself raises.
const ErrorDomain = "sessiond.v1"

// Reason is the ErrorInfo reason of a failed call, in UPPER_SNAKE_CASE. It is
// an error value, so that errors.Is(err, ReasonSessionNotFound) matches an
// *Error carrying that reason. A reason the server sends that has no constant
// here is kept as its string.
type Reason string

// Error makes a Reason usable as an errors.Is target.
func (r Reason) Error() string { return "sessiond: " + string(r) }

// The reasons the server sends (docs/clients.md, §3).
const (
	ReasonBadRequest         Reason = "BAD_REQUEST"
	ReasonMalformedRequest   Reason = "MALFORMED_REQUEST"
	ReasonSessionNotFound    Reason = "SESSION_NOT_FOUND"
	ReasonSessionExists      Reason = "SESSION_EXISTS"
	ReasonSessionEnded       Reason = "SESSION_ENDED"
	ReasonSessionEmpty       Reason = "SESSION_EMPTY"
	ReasonEtagMismatch       Reason = "ETAG_MISMATCH"
	ReasonLastSeqMismatch    Reason = "LAST_SEQ_MISMATCH"
	ReasonMessageIDConflict  Reason = "MESSAGE_ID_CONFLICT"
	ReasonUsageOverflow      Reason = "USAGE_OVERFLOW"
	ReasonRevisionCompacted  Reason = "REVISION_COMPACTED"
	ReasonTooManyWatches     Reason = "TOO_MANY_WATCHES"
	ReasonRateLimited        Reason = "RATE_LIMITED"
	ReasonShuttingDown       Reason = "SHUTTING_DOWN"
	ReasonStorageUnavailable Reason = "STORAGE_UNAVAILABLE"
	ReasonUnauthenticated    Reason = "UNAUTHENTICATED"
	ReasonUnknownAPIKey      Reason = "UNKNOWN_API_KEY"
	ReasonPermissionDenied   Reason = "PERMISSION_DENIED"
	ReasonOwnerNotAllowed    Reason = "OWNER_NOT_ALLOWED"
	ReasonDatasetNotAllowed  Reason = "DATASET_NOT_ALLOWED"
	ReasonStoreError         Reason = "STORE_ERROR"
	ReasonInternal           Reason = "INTERNAL"
)

// ErrRelistRequired matches (errors.Is) the error that ends a watch whose
// resume revision has been compacted out of the change log: code
// FAILED_PRECONDITION with reason REVISION_COMPACTED. List again and watch
// from the list's revision + 1; (*Error).CompactedRevision says how far the
// log was cut.
var ErrRelistRequired = errors.New("sessiond: relist required: the watch's resume revision was compacted")

// FieldViolation is one entry of a BadRequest: the offending field's path
// (such as "messages[2].content") and what is wrong with it.
type FieldViolation struct {
	Field       string
	Description string
}

// Error is a failed sessiond call: the gRPC code and message, and the
// google.rpc.Status details the server attached (ErrorInfo reason, domain and
// metadata; BadRequest field violations). Reason is "" when the server sent
// none, for example when the connection failed before reaching it.
type Error struct {
	Code            codes.Code
	Message         string
	Reason          Reason
	Domain          string
	Metadata        map[string]string
	FieldViolations []FieldViolation

	status *status.Status
}

func (e *Error) Error() string {
	text := "sessiond: " + e.Code.String()
	if e.Message != "" {
		text += ": " + e.Message
	}
	if e.Reason != "" {
		text += " (" + string(e.Reason) + ")"
	}
	return text
}

// Is matches a Reason constant equal to e.Reason, and ErrRelistRequired when
// e is the compacted-watch error.
func (e *Error) Is(target error) bool {
	if target == ErrRelistRequired {
		return e.RelistRequired()
	}
	if reason, ok := target.(Reason); ok {
		return e.Reason != "" && e.Reason == reason
	}
	return false
}

// GRPCStatus lets status.Code(err) and status.Convert(err) read an *Error.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// RelistRequired reports whether e is the compacted-watch error.
func (e *Error) RelistRequired() bool {
	return e.Code == codes.FailedPrecondition && e.Reason == ReasonRevisionCompacted
}

// CompactedRevision is the highest revision removed from the change log, as
// the server put it in the ErrorInfo metadata of the compacted-watch error
// (0 when absent or unreadable).
func (e *Error) CompactedRevision() int64 {
	revision, err := strconv.ParseInt(e.Metadata["compacted_revision"], 10, 64)
	if err != nil {
		return 0
	}
	return revision
}

// errorFrom converts what a gRPC call returned into an *Error (nil stays nil;
// an *Error is returned as it is).
func errorFrom(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return already
	}
	st := status.Convert(err)
	out := &Error{Code: st.Code(), Message: st.Message(), Metadata: map[string]string{}, status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			out.Reason = Reason(d.GetReason())
			out.Domain = d.GetDomain()
			for key, value := range d.GetMetadata() {
				out.Metadata[key] = value
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out.FieldViolations = append(out.FieldViolations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		}
	}
	return out
}

// clientError is an error the client raises itself, before or instead of a call.
func clientError(code codes.Code, format string, args ...any) *Error {
	message := fmt.Sprintf(format, args...)
	return &Error{Code: code, Message: message, Metadata: map[string]string{}, status: status.New(code, message)}
}
