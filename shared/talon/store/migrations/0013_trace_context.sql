-- Trace context (W3C traceparent) of the request or schedule fire that queued a turn, and of
-- the latest attempt that ran it: an attempt resumed after a crash links to the one before.
ALTER TABLE turns ADD COLUMN traceparent text, ADD COLUMN attempt_span text;
