package apierr

// Reason is a stable, machine-readable name for the rule an error reports.
// Reasons are part of the API: a reason is never renamed or given another
// meaning, and a new one is added to reasons below (the documentation in
// docs/errors.md is checked against that list).
type Reason string

// The reasons, grouped by kind.
const (
	// ReasonInvalidField: a request field breaks a rule; Field names it.
	ReasonInvalidField Reason = "invalid_field"
	// ReasonMalformedRequest: the request cannot be decoded, or is wrong as a whole.
	ReasonMalformedRequest Reason = "malformed_request"
	// ReasonUnsupported: the request asks for something Flotilla does not do (yet).
	ReasonUnsupported Reason = "unsupported"
	// ReasonTooLarge: the request, or a field of it, is larger than a limit.
	ReasonTooLarge Reason = "too_large"
	// ReasonRequestTimeout: the client did not send its request in time.
	ReasonRequestTimeout Reason = "request_timeout"

	// ReasonNotFound: the named resource does not exist.
	ReasonNotFound Reason = "not_found"

	// ReasonVersionMismatch: the resource changed since the version the
	// caller read; read it again and retry.
	ReasonVersionMismatch Reason = "version_mismatch"
	// ReasonAlreadyExists: a resource with this name or id exists already.
	ReasonAlreadyExists Reason = "already_exists"
	// ReasonInUse: the resource cannot be deleted while others refer to it.
	ReasonInUse Reason = "in_use"
	// ReasonLifecycleBusy: another lifecycle action is in progress on the
	// instance; wait until it finishes.
	ReasonLifecycleBusy Reason = "lifecycle_busy"
	// ReasonInvalidState: the resource's state does not allow this (a
	// running instance cannot be deleted, say).
	ReasonInvalidState Reason = "invalid_state"
	// ReasonConcurrentChange: another request changed the same thing at the
	// same moment; retrying is safe.
	ReasonConcurrentChange Reason = "concurrent_change"
	// ReasonLastAdmin: the change would leave no admin.
	ReasonLastAdmin Reason = "last_admin"
	// ReasonLeaseSuperseded: a provisioner's record came under a lease of
	// the instance older than the newest one (between services only).
	ReasonLeaseSuperseded Reason = "lease_superseded"

	// ReasonUnauthenticated: no valid credential (missing, wrong, expired or
	// revoked token; wrong user name or password).
	ReasonUnauthenticated Reason = "unauthenticated"
	// ReasonPermissionDenied: the caller is known but may not do this.
	ReasonPermissionDenied Reason = "permission_denied"
	// ReasonPasswordChangeRequired: an admin reset the user's password;
	// they must change it before doing anything else.
	ReasonPasswordChangeRequired Reason = "password_change_required"
	// ReasonTooManyAttempts: too many failed attempts (logins); wait
	// RetryAfter before the next.
	ReasonTooManyAttempts Reason = "too_many_attempts"
	// ReasonUnavailable: a service or dependency cannot be reached now;
	// retrying later may work.
	ReasonUnavailable Reason = "unavailable"
	// ReasonInternal: something failed inside Flotilla; the message carries
	// an error id that the server's log has the detail for.
	ReasonInternal Reason = "internal"
)

// ReasonInfo documents one reason.
type ReasonInfo struct {
	Reason Reason
	Kind   Kind
	Doc    string
}

// reasons is every reason, its kind and what it means.
var reasons = []ReasonInfo{
	{ReasonInvalidField, KindInvalid, "a request field breaks a rule; `field` names it and the message states the rule"},
	{ReasonMalformedRequest, KindInvalid, "the request cannot be decoded (bad JSON, unknown field, wrong type) or is wrong as a whole"},
	{ReasonUnsupported, KindInvalid, "the request asks for something Flotilla does not do yet (a provider or HTTPS strategy without a driver)"},
	{ReasonTooLarge, KindInvalid, "the request body (413), a field (`field` names it) or the whole request is larger than the limit the message states"},
	{ReasonRequestTimeout, KindInvalid, "the request body did not arrive within the gateway's read timeout (408)"},
	{ReasonNotFound, KindNotFound, "the named resource (or API path) does not exist"},
	{ReasonVersionMismatch, KindConflict, "the resource changed since the version sent: read it again, reapply the change, retry"},
	{ReasonAlreadyExists, KindConflict, "a resource with this name or id exists already (or initial setup was done)"},
	{ReasonInUse, KindConflict, "the resource cannot be deleted while others refer to it; the message names them"},
	{ReasonLifecycleBusy, KindConflict, "another lifecycle action is in progress on the instance: wait until it finishes"},
	{ReasonInvalidState, KindConflict, "the resource's state does not allow this (delete a running instance; change the template of a provisioned one)"},
	{ReasonConcurrentChange, KindConflict, "another request changed the same thing at the same moment; retrying is safe"},
	{ReasonLastAdmin, KindConflict, "the change (a role, a deletion) would leave no admin: make another user admin first"},
	{ReasonLeaseSuperseded, KindConflict, "(between services) a provisioner recorded a step under a lease of the instance that another provisioner has taken over since: the record is refused, and the newer holder's work stands"},
	{ReasonUnauthenticated, KindUnauthenticated, "no valid credential: missing, invalid, expired or revoked token, or wrong user name or password"},
	{ReasonPermissionDenied, KindPermissionDenied, "the caller is known but its role (or its kind of token) may not do this"},
	{ReasonPasswordChangeRequired, KindPermissionDenied, "an admin reset the user's password: change it (`POST /api/v1/users/me:change-password`) before anything else"},
	{ReasonTooManyAttempts, KindExhausted, "too many failed attempts (logins) for this user or from this address: wait as long as Retry-After (RetryInfo in gRPC) says"},
	{ReasonUnavailable, KindUnavailable, "a service or dependency cannot be reached now; retry later"},
	{ReasonInternal, KindInternal, "something failed inside Flotilla; the message carries an error id the server log has the detail for"},
}

// Reasons returns every reason with its kind and meaning.
func Reasons() []ReasonInfo { return append([]ReasonInfo(nil), reasons...) }

// Kind returns the kind of error the reason belongs to; an unknown reason is
// internal.
func (r Reason) Kind() Kind {
	for _, ri := range reasons {
		if ri.Reason == r {
			return ri.Kind
		}
	}
	return KindInternal
}

// defaultReason is the reason of an error that names only its kind (an old
// peer's bus reply, a gRPC status without ErrorInfo).
func defaultReason(k Kind, field string) Reason {
	switch k {
	case KindInvalid:
		if field != "" {
			return ReasonInvalidField
		}
		return ReasonMalformedRequest
	case KindNotFound:
		return ReasonNotFound
	case KindConflict:
		return ReasonConcurrentChange
	case KindUnauthenticated:
		return ReasonUnauthenticated
	case KindPermissionDenied:
		return ReasonPermissionDenied
	case KindUnavailable:
		return ReasonUnavailable
	case KindExhausted:
		return ReasonTooManyAttempts
	}
	return ReasonInternal
}
