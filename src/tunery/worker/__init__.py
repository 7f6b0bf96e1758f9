"""The job runner: claims jobs, runs each training in a child process, watches it, recovers after crashes."""
