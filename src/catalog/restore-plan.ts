/**
 * Builds a restore plan from catalogue records: the chain is resolved with
 * the shared resolveChain (ranged reads of footer/header/trailer per archive)
 * with parents located through the catalogue, then planned with the shared
 * planner. Used by POST /restores.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { NotFoundError } from '../errors.js';
import { S3RangeSource } from '../store/s3-source.js';
import type { RestorePlanBuilder } from './api.js';
import { resolveChain } from '../restore/chain.js';
import { planRestore, type ArchiveLocator, type RestorePlan } from '../restore/plan.js';
import type { CatalogRepository } from './repository.js';

export function createPlanBuilder(repo: CatalogRepository, s3: S3Client): RestorePlanBuilder {
  return async ({ archive, devices }): Promise<RestorePlan> => {
    const chain = await resolveChain(
      { kind: 's3', bucket: archive.bucket, key: archive.key },
      {
        openSource: async (loc: ArchiveLocator) => {
          if (loc.kind !== 's3') throw new NotFoundError(`catalogue archives live in S3, not ${loc.path}`);
          return S3RangeSource.open(s3, loc.bucket, loc.key);
        },
        locateParent: async (uuid: string) => {
          const parent = await repo.getArchive(uuid);
          if (!parent || parent.status === 'DELETED' || parent.status === 'REJECTED') return null;
          return { kind: 's3', bucket: parent.bucket, key: parent.key };
        },
      },
    );
    return planRestore(chain, devices ? { devices } : {});
  };
}
