/**
 * The catalogue HTTP API (API Gateway v2, payload format 2.0) in front of
 * lambda/api.ts. Every route requires IAM (SigV4) authorization: the CLI and
 * the agent sign requests with their AWS credentials, and each agent role
 * may only invoke the agent routes (see AgentAccess).
 */
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigatewayv2';
import { HttpIamAuthorizer } from 'aws-cdk-lib/aws-apigatewayv2-authorizers';
import { HttpLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';

export interface ApiRoute {
  method: apigw.HttpMethod;
  path: string;
}

const { GET, POST, DELETE } = apigw.HttpMethod;

/** The catalogue API routes (docs/catalogue.md). */
export const CATALOG_ROUTES: readonly ApiRoute[] = [
  { method: GET, path: '/archives' },
  { method: GET, path: '/archives/{id}' },
  { method: GET, path: '/archives/{id}/chain' },
  { method: DELETE, path: '/archives/{id}' },
  { method: POST, path: '/restores' },
  { method: GET, path: '/restores/{id}' },
  { method: POST, path: '/restores/{id}/claim' },
  { method: POST, path: '/restores/{id}/progress' },
  { method: POST, path: '/restores/{id}/complete' },
  { method: POST, path: '/restores/{id}/cancel' },
  { method: GET, path: '/hosts' },
  { method: GET, path: '/hosts/{hostId}/restores' },
  { method: POST, path: '/exports' },
  { method: GET, path: '/exports/{id}' },
  { method: DELETE, path: '/exports/{id}' },
  { method: POST, path: '/exports/{id}/claim' },
  { method: POST, path: '/exports/{id}/progress' },
  { method: POST, path: '/exports/{id}/complete' },
  { method: POST, path: '/exports/{id}/cancel' },
  { method: GET, path: '/hosts/{hostId}/exports' },
];

export interface CatalogApiProps {
  handler: lambda.IFunction;
  /** Steady-state requests/s and burst for the whole stage (bounds cost of a runaway client). */
  rateLimit?: number;
  burstLimit?: number;
}

export class CatalogApi extends Construct {
  readonly httpApi: apigw.HttpApi;
  readonly stage: apigw.HttpStage;
  readonly accessLogs: logs.LogGroup;

  constructor(scope: Construct, id: string, props: CatalogApiProps) {
    super(scope, id);
    this.httpApi = new apigw.HttpApi(this, 'HttpApi', {
      description: 'cowstream catalogue (IAM/SigV4 on every route)',
      createDefaultStage: false,
      defaultAuthorizer: new HttpIamAuthorizer(),
    });

    // Access logs (AwsSolutions-APIG1): who called which route, for audits.
    this.accessLogs = new logs.LogGroup(this, 'AccessLogs', {
      retention: logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.stage = new apigw.HttpStage(this, 'DefaultStage', {
      httpApi: this.httpApi,
      stageName: '$default',
      autoDeploy: true,
      throttle: { rateLimit: props.rateLimit ?? 50, burstLimit: props.burstLimit ?? 100 },
      accessLogSettings: { destination: new apigw.LogGroupLogDestination(this.accessLogs) },
    });

    // One integration for all routes; its invoke permission covers this API only.
    const integration = new HttpLambdaIntegration('Catalog', props.handler, {
      payloadFormatVersion: apigw.PayloadFormatVersion.VERSION_2_0,
      scopePermissionToRoute: false,
      timeout: Duration.seconds(29),
    });
    for (const route of CATALOG_ROUTES) {
      this.httpApi.addRoutes({ path: route.path, methods: [route.method], integration });
    }
  }

  /** Base URL for `catalog.url` in the agent/CLI config (no trailing slash). */
  get url(): string {
    return this.httpApi.apiEndpoint;
  }

  /**
   * execute-api ARN of one request shape. Stage is `*`: the API has only the
   * `$default` stage and the stage segment spelling for it is not something
   * a policy should depend on.
   */
  invokeArn(method: string, path: string): string {
    return this.httpApi.arnForExecuteApi(method, path, '*');
  }
}
