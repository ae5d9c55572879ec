// One error base for everything Postern throws, in the shape of undici's
// UndiciError: each class has a stable `code` (ERR_*; a code is never
// reused for another meaning), so logs, tests and callers can tell errors
// apart without matching messages. Two kinds:
//   - ClientError: carries the SQLSTATE (and severity, detail, hint)
//     PostgreSQL would use; its message may be sent to the client as is.
//   - any other PosternError is internal: it is logged with its context and
//     the client sees a generic error (XX000, or 08P01 for a protocol
//     violation).
// This module imports nothing, so every layer (protocol/ included) may use it.

export class PosternError extends Error {
  readonly code: string;
  constructor(message: string, code = 'ERR_POSTERN', options?: ErrorOptions) {
    super(message, options);
    this.name = 'PosternError';
    this.code = code;
  }
}

export type ClientSeverity = 'ERROR' | 'FATAL';

/** An error meant for the client, with the SQLSTATE PostgreSQL would send. */
export class ClientError extends PosternError {
  readonly sqlstate: string;
  readonly severity: ClientSeverity;
  readonly detail: string | undefined;
  readonly hint: string | undefined;
  constructor(
    sqlstate: string,
    message: string,
    o: { code?: string; severity?: ClientSeverity; detail?: string | undefined; hint?: string | undefined } = {},
  ) {
    super(message, o.code ?? 'ERR_CLIENT');
    this.name = 'ClientError';
    this.sqlstate = sqlstate;
    this.severity = o.severity ?? 'ERROR';
    this.detail = o.detail;
    this.hint = o.hint;
  }
}
