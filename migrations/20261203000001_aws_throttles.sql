-- AWS throttles per service and minute, summed over every replica (each adds what it saw since its
-- last write), for the console's fleet page. Kept a week (db::retention).
CREATE TABLE aws_throttles (
    minute     timestamptz NOT NULL,
    service    text NOT NULL,
    throttles  bigint NOT NULL,
    PRIMARY KEY (minute, service)
);
