// The root logger (pino, JSON lines). Connection-scoped loggers are children
// carrying `client` (and `server` once linked). Redaction is a second line of
// defence: code never passes secrets to the logger in the first place. The
// redacted field names come from the settings table's secret flag, so a new
// secret setting is redacted wherever a config object is logged.

import { type DestinationStream, type Logger, pino } from 'pino';
import { SECRET_KEYS } from '../config/schema.ts';

export type { Logger };

/** Field names of secret settings (server_password, query_password ...) plus the generic ones. */
const SECRET_FIELDS: readonly string[] = [
  ...new Set(['password', 'secret', 'key', ...[...SECRET_KEYS].map((k) => k.split('.').pop() as string)]),
];

/** pino redaction paths: each secret field at the top level and up to three levels down. */
export const REDACT_PATHS: readonly string[] = SECRET_FIELDS.flatMap((f) => [f, `*.${f}`, `*.*.${f}`, `*.*.*.${f}`]);

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const opts = {
    level,
    base: { name: 'postern' },
    redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
  };
  return destination ? pino(opts, destination) : pino(opts);
}
