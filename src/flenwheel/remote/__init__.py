"""Clients for the paid remote services (fal.ai, Replicate), shared by their engines and trainers.

One client per service speaks its protocol, turns its errors into `RemoteError` (transient or not, with the
server's Retry-After), retries what is safe to retry, waits on a remote job, and cancels it when the caller
cancels or its time limit is reached. This package sits below providers/ and trainers/: it imports only
config, domain and errors.
"""
