"""One router per resource; each is thin and calls datasets/, jobs/ and pipeline/ functions."""
