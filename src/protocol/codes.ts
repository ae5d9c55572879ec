// Message type bytes and protocol constants of the PostgreSQL v3 wire protocol.
// Source: https://www.postgresql.org/docs/current/protocol-message-formats.html
// Codes are plain numbers (char codes) so the hot path compares bytes without
// creating strings.

/** Messages a client (frontend) sends after the startup phase. */
export const FE = {
  Bind: 0x42, // 'B'
  Close: 0x43, // 'C'
  CopyData: 0x64, // 'd'
  CopyDone: 0x63, // 'c'
  CopyFail: 0x66, // 'f'
  Describe: 0x44, // 'D'
  Execute: 0x45, // 'E'
  Flush: 0x48, // 'H'
  FunctionCall: 0x46, // 'F'
  Parse: 0x50, // 'P'
  /** PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse all share 'p'. */
  Password: 0x70, // 'p'
  Query: 0x51, // 'Q'
  Sync: 0x53, // 'S'
  Terminate: 0x58, // 'X'
} as const;

/** Messages a server (backend) sends. */
export const BE = {
  Authentication: 0x52, // 'R'
  BackendKeyData: 0x4b, // 'K'
  BindComplete: 0x32, // '2'
  CloseComplete: 0x33, // '3'
  CommandComplete: 0x43, // 'C'
  CopyData: 0x64, // 'd'
  CopyDone: 0x63, // 'c'
  CopyInResponse: 0x47, // 'G'
  CopyOutResponse: 0x48, // 'H'
  CopyBothResponse: 0x57, // 'W'
  DataRow: 0x44, // 'D'
  EmptyQueryResponse: 0x49, // 'I'
  ErrorResponse: 0x45, // 'E'
  FunctionCallResponse: 0x56, // 'V'
  NegotiateProtocolVersion: 0x76, // 'v'
  NoData: 0x6e, // 'n'
  NoticeResponse: 0x4e, // 'N'
  NotificationResponse: 0x41, // 'A'
  ParameterDescription: 0x74, // 't'
  ParameterStatus: 0x53, // 'S'
  ParseComplete: 0x31, // '1'
  PortalSuspended: 0x73, // 's'
  ReadyForQuery: 0x5a, // 'Z'
  RowDescription: 0x54, // 'T'
} as const;

/** Authentication request subtypes (the Int32 after 'R'). */
export const AUTH = {
  Ok: 0,
  KerberosV5: 2,
  CleartextPassword: 3,
  MD5Password: 5,
  GSS: 7,
  GSSContinue: 8,
  SSPI: 9,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

/** Special request codes sent in place of a protocol version in the startup packet. */
export const REQUEST_CODE = {
  Cancel: 80877102, // (1234 << 16) | 5678
  SSL: 80877103, // (1234 << 16) | 5679
  GSSENC: 80877104, // (1234 << 16) | 5680
  /**
   * Postern's own: a cancel request forwarded by another Postern instance of
   * the same cluster, signed with cluster.secret (never sent by a client;
   * PostgreSQL would refuse it as an unsupported protocol version).
   */
  PeerCancel: 80877122, // (1234 << 16) | 5698
} as const;

/** Length of the HMAC-SHA256 that ends a PeerCancel packet. */
export const PEER_CANCEL_MAC = 32;

export const PROTOCOL_3_0 = 0x30000; // 196608
export const PROTOCOL_3_2 = 0x30002; // 196610
/** Highest minor version of protocol 3 that Postern speaks. */
export const LATEST_MINOR = 2;

/** Postgres caps startup packets at 10,000 bytes (MAX_STARTUP_PACKET_LENGTH). */
export const MAX_STARTUP_PACKET = 10_000;
/** Postgres's own maximum message size (PQ_LARGE_MESSAGE_LIMIT is 1 GB - 1; MaxAllocSize). */
export const DEFAULT_MAX_MESSAGE = 1024 * 1024 * 1024;
/** Protocol 3.2 cancel keys may be up to 256 bytes. */
export const MAX_CANCEL_KEY = 256;

/** Transaction status byte carried by ReadyForQuery. */
export const TX = {
  Idle: 0x49, // 'I'
  InTransaction: 0x54, // 'T'
  Failed: 0x45, // 'E'
} as const;

/**
 * A 256-entry table with 1 for each listed message type: the shape the framer
 * uses to decide per type byte (valid, inspected, counted) with one index.
 */
export function typeTable(codes: readonly number[]): Uint8Array {
  const t = new Uint8Array(256);
  for (const c of codes) t[c] = 1;
  return t;
}

/** 1 for every message type a client may legally send after startup. */
export const VALID_FRONTEND = typeTable(Object.values(FE));
/** 1 for every message type a server may legally send. */
export const VALID_BACKEND = typeTable(Object.values(BE));

/** PostgreSQL's cap on messages it expects to be small (PQ_SMALL_MESSAGE_LIMIT). */
export const SMALL_MESSAGE_LIMIT = 10_000;
/** PostgreSQL's cap on an authentication message from a client (PG_MAX_AUTH_TOKEN_LENGTH). */
export const MAX_AUTH_MESSAGE = 65_535;

/**
 * Length limits for client messages, by type, as PostgreSQL's SocketBackend
 * applies them: before authentication every message is an authentication
 * message (capped small, so an unauthenticated peer cannot make Postern
 * buffer a gigabyte); afterwards Sync, Flush, Terminate and CopyDone have no
 * body (exactly 4), Close, Describe, Execute and CopyFail are small, and
 * Query, Parse, Bind, FunctionCall and CopyData may be up to maxMessage.
 * https://www.postgresql.org/docs/current/protocol-message-formats.html
 */
export function frontendLimits(maxMessage: number, authenticated: boolean): { min: Int32Array; max: Int32Array } {
  const min = new Int32Array(256).fill(4);
  const max = new Int32Array(256).fill(authenticated ? Math.min(maxMessage, SMALL_MESSAGE_LIMIT) : Math.min(maxMessage, MAX_AUTH_MESSAGE));
  if (authenticated) {
    for (const t of [FE.Query, FE.Parse, FE.Bind, FE.FunctionCall, FE.CopyData]) max[t] = maxMessage;
    for (const t of [FE.Sync, FE.Flush, FE.Terminate, FE.CopyDone]) max[t] = 4;
    // A password message after login is not legal; relayed sessions leave it to the server.
    max[FE.Password] = Math.min(maxMessage, MAX_AUTH_MESSAGE);
  } else max[FE.Terminate] = 4;
  return { min, max };
}
