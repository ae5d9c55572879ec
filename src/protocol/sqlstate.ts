// SQLSTATE codes Postern itself sends, named as in PostgreSQL's errcodes.txt.
// https://www.postgresql.org/docs/current/errcodes-appendix.html

export const SQLSTATE = {
  ConnectionException: '08000',
  ConnectionFailure: '08006',
  SqlclientUnableToEstablishSqlconnection: '08001',
  ProtocolViolation: '08P01',
  FeatureNotSupported: '0A000',
  InvalidAuthorizationSpecification: '28000',
  InvalidPassword: '28P01',
  InvalidCatalogName: '3D000',
  TooManyConnections: '53300',
  ConfigurationLimitExceeded: '53400',
  OperatorIntervention: '57000',
  QueryCanceled: '57014',
  AdminShutdown: '57P01',
  CrashShutdown: '57P02',
  CannotConnectNow: '57P03',
  IdleSessionTimeout: '57P05',
  IdleInTransactionSessionTimeout: '25P03',
  InternalError: 'XX000',
  InsufficientPrivilege: '42501',
  SyntaxError: '42601',
  InvalidName: '42602',
  UndefinedObject: '42704',
  InvalidParameterValue: '22023',
  ConfigFileError: 'F0000',
} as const;

export type SqlState = (typeof SQLSTATE)[keyof typeof SQLSTATE];
