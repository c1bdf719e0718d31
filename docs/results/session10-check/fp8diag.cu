#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdint>
#define CK(x) do{cublasStatus_t s_=(x); if(s_) printf("  %s -> %d\n", #x, int(s_));}while(0)
int main(){
  printf("cublasLt version %zu cudart %zu\n", cublasLtGetVersion(), cublasLtGetCudartVersion());
  cublasLtHandle_t lt; cublasLtCreate(&lt);
  int M=256,N=384,K=256;
  void *A,*B,*C,*D,*ws; float* sc; size_t wss=32<<20;
  cudaMalloc(&A,M*K); cudaMalloc(&B,N*K); cudaMalloc(&C,M*N*2); cudaMalloc(&D,M*N*2); cudaMalloc(&ws,wss); cudaMalloc(&sc,64);
  cudaMemset(A,0,M*K); cudaMemset(B,0,N*K); cudaMemset(sc,0,64);
  for (int variant=0; variant<10; ++variant){
    bool sepC = variant&1, noAlign = variant&2, noScale = variant&4; int soff = variant>=8 ? (variant==8?1:2) : 0; if (variant>=8) sepC=noAlign=noScale=false;
    printf("variant %d: sepC %d noAlign %d noScale %d scale offset %d floats\n", variant, sepC, noAlign, noScale, soff);
    cublasLtMatmulDesc_t desc; CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t T=CUBLAS_OP_T, Nn=CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &T, sizeof(T)));
    CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &Nn, sizeof(Nn)));
    if(!noScale){ const float* p=sc+soff; CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,&p,sizeof(p)));
      const float* p2=sc+4+soff; CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,&p2,sizeof(p2)));}
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, K, N, K));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, K, M, K));
    CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, N, M, N));
    cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,&wss,sizeof(wss)));
    if(!noAlign){ uint32_t al=16; for (auto a: {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) CK(cublasLtMatmulPreferenceSetAttribute(pref,a,&al,sizeof(al)));}
    cublasLtMatmulHeuristicResult_t h[8]; int found=0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 8, h, &found));
    printf("  found %d\n", found);
    float alpha=1, beta=variant==0?0.f:1.f;
    for(int i=0;i<found;++i){
      cublasStatus_t s=cublasLtMatmul(lt, desc, &alpha, B, la, A, lb, &beta, sepC?C:D, lc, D, lc, &h[i].algo, ws, wss, 0);
      cudaError_t e=cudaDeviceSynchronize();
      printf("  algo %d ws %zu: matmul %d, sync %d\n", i, h[i].workspaceSize, int(s), int(e));
    }
    // also with workspace 0 / null
    if(found){ cublasStatus_t s=cublasLtMatmul(lt, desc, &alpha, B, la, A, lb, &beta, sepC?C:D, lc, D, lc, &h[0].algo, nullptr, 0, 0); printf("  algo0 no-ws: %d\n", int(s)); }
    // host-side null algo (let cublasLt pick)
    { cublasStatus_t s=cublasLtMatmul(lt, desc, &alpha, B, la, A, lb, &beta, sepC?C:D, lc, D, lc, nullptr, ws, wss, 0); printf("  null algo: %d\n", int(s)); }
  }
  return 0;
}
