// The root logger (pino, JSON lines). Connection-scoped loggers are children
// carrying `client` (and `server` once linked). Redaction is a second line of
// defence: code never passes secrets to the logger in the first place.

import { type DestinationStream, type Logger, pino } from 'pino';

export type { Logger };

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const opts = {
    level,
    base: { name: 'postern' },
    redact: { paths: ['password', '*.password', 'secret', '*.secret', 'key', '*.key'], censor: '[redacted]' },
  };
  return destination ? pino(opts, destination) : pino(opts);
}
