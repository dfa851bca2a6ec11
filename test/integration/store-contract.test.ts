import { runS3ContractSuite } from '../helpers/s3-contract.js';
import { startFauxqs, startS3rver } from '../helpers/s3-servers.js';

// One suite, two real servers: s3rver (on disk; cannot abort or list
// multipart uploads) and fauxqs (in memory; aborts, cannot list).
runS3ContractSuite('s3rver', () => startS3rver());
runS3ContractSuite('fauxqs', () => startFauxqs());
