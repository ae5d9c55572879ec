// The one error type the protocol layer throws: a peer broke the wire protocol.
// The session catches it in exactly one place, answers FATAL 08P01 (when the
// peer is a client) and closes.

import { PosternError } from '../errors.ts';

export const VIOLATION = {
  BadLength: 'bad_length',
  TooLarge: 'too_large',
  BadType: 'bad_type',
  Truncated: 'truncated',
  Malformed: 'malformed',
  UnexpectedBytes: 'unexpected_bytes',
  BadStartup: 'bad_startup',
} as const;
export type ViolationKind = (typeof VIOLATION)[keyof typeof VIOLATION];

export class ProtocolViolation extends PosternError {
  readonly kind: ViolationKind;
  constructor(kind: ViolationKind, message: string) {
    super(message, 'ERR_PROTOCOL_VIOLATION');
    this.name = 'ProtocolViolation';
    this.kind = kind;
  }
}
